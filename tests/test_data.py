import numpy as np
import pytest
import torch

from conftest import make_dataset
from fmnist_seq.config import DownloadConfig, FileSpec
from fmnist_seq.data import (Normalization, RAW_FILES, data_metrics, examples_per_class, load_split,
                             prepare_splits, read_raw, save_prepared, load_normalization, stratified_split)
from fmnist_seq.download import fetch_all
from fmnist_seq.errors import DataError


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mirror")
    files = make_dataset(folder, per_class_train=40, per_class_test=10)
    out = tmp_path_factory.mktemp("raw")
    cfg = DownloadConfig(sources=[str(folder)], files={n: FileSpec(**s) for n, s in files.items()})
    fetch_all(cfg, out)
    return read_raw(out)


def test_split_sizes_stratification_and_no_overlap(raw):
    train_idx, valid_idx = stratified_split(raw["train_labels"], 0.1, seed=1)
    assert len(train_idx) == 360 and len(valid_idx) == 40
    assert set(train_idx.tolist()).isdisjoint(valid_idx.tolist())
    assert len(set(train_idx.tolist()) | set(valid_idx.tolist())) == 400
    assert torch.bincount(raw["train_labels"][valid_idx].long(), minlength=10).tolist() == [4] * 10


def test_split_is_deterministic_and_seed_dependent(raw):
    a = stratified_split(raw["train_labels"], 0.25, seed=7)
    b = stratified_split(raw["train_labels"], 0.25, seed=7)
    c = stratified_split(raw["train_labels"], 0.25, seed=8)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_normalization_comes_from_train_split_only(raw, tmp_path):
    splits, norm = prepare_splits(raw, 0.1, seed=3)
    train_pixels = raw["train_images"][splits["train"].source_index].double() / 255
    assert norm.mean == pytest.approx(train_pixels.mean().item())
    assert norm.std == pytest.approx(train_pixels.std().item())
    assert splits["train"].images.mean().item() == pytest.approx(0, abs=1e-4)
    assert splits["train"].images.dtype == torch.float32 and splits["test"].labels.dtype == torch.int64
    assert len(splits["test"]) == 100
    save_prepared(splits, norm, tmp_path)
    again = load_split(tmp_path, "valid")
    assert torch.equal(again.images, splits["valid"].images)
    assert load_normalization(tmp_path) == norm


def test_metrics_and_examples(raw):
    splits, norm = prepare_splits(raw, 0.1, seed=3)
    metrics = data_metrics(splits, norm)
    assert metrics["train"]["count"] == 360 and metrics["valid"]["per_class"]["ankle_boot"] == 4
    picks = examples_per_class(splits["train"])
    assert splits["train"].labels[picks].tolist() == list(range(10))


def test_missing_raw_file_and_bad_prepared_file(tmp_path):
    with pytest.raises(DataError, match="run the download stage first"):
        read_raw(tmp_path)
    (tmp_path / "train.pt").write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="train.pt is not a prepared split"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="rerun `dvc repro prepare`"):
        load_normalization(tmp_path)


def test_normalization_apply_matches_definition():
    norm = Normalization(mean=0.5, std=0.25)
    out = norm.apply(torch.tensor([0, 255], dtype=torch.uint8))
    assert out.tolist() == [-2.0, 2.0]
    assert RAW_FILES["test_labels"] == "t10k-labels-idx1-ubyte"
    assert np.isclose(Normalization.fit(torch.tensor([0, 255], dtype=torch.uint8)).mean, 0.5)
