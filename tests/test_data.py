import numpy as np
import pytest
import torch

from conftest import make_dataset
from fmnist_seq.config import DownloadConfig, FileSpec
from fmnist_seq.data import (Normalization, data_metrics, examples_per_class, load_normalization, load_split,
                             per_class_counts, prepare_splits, read_raw, save_prepared, stratified_split)
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


def test_splits_keep_raw_pixels_and_statistics_come_from_train_only(raw, tmp_path):
    splits, norm = prepare_splits(raw, 0.1, seed=3)
    train_pixels = raw["train_images"][splits["train"].source_index].double() / 255
    assert norm.mean == pytest.approx(train_pixels.mean().item())
    assert norm.std == pytest.approx(train_pixels.std().item())
    all_pixels = raw["train_images"].double() / 255  # valid is held out: its pixels must not move the statistics
    assert norm.mean != pytest.approx(all_pixels.mean().item(), abs=1e-9)
    for name, split in splits.items():  # one form of the data: the IDX file's own uint8 pixels
        source = raw["test_images" if name == "test" else "train_images"]
        assert split.images.dtype == torch.uint8 and torch.equal(split.images, source[split.source_index])
    assert splits["test"].labels.dtype == torch.int64 and len(splits["test"]) == 100
    save_prepared(splits, norm, tmp_path)
    again = load_split(tmp_path, "valid")
    assert torch.equal(again.images, splits["valid"].images)
    assert load_normalization(tmp_path) == norm


def test_prepared_files_are_byte_identical_across_runs(raw, tmp_path):
    # DVC hashes the bytes: if two runs of prepare differ, every training stage reruns for nothing.
    splits, norm = prepare_splits(raw, 0.1, seed=3)
    save_prepared(splits, norm, tmp_path / "a")
    save_prepared(splits, norm, tmp_path / "b")
    for name in ("train.pt", "valid.pt", "test.pt", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_metrics_and_examples(raw):
    splits, norm = prepare_splits(raw, 0.1, seed=3)
    metrics = data_metrics(splits, norm)
    assert (metrics["train_images"], metrics["valid_images"], metrics["test_images"]) == (360, 40, 100)
    assert metrics["pixel_mean"] == norm.mean and metrics["pixel_std"] == norm.std
    counts = per_class_counts(splits)
    assert counts["valid"]["ankle_boot"] == 4 and sum(counts["train"].values()) == 360
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
    # A split written by an older version (normalized floats) is refused, not silently normalized twice.
    torch.save({"images": torch.zeros(2, 28, 28), "labels": torch.zeros(2, dtype=torch.long),
                "source_index": torch.arange(2)}, tmp_path / "valid.pt")
    with pytest.raises(DataError, match="float32 images, not uint8 pixels"):
        load_split(tmp_path, "valid")


def test_normalization_fit_uses_the_0_1_scale():
    norm = Normalization.fit(torch.tensor([0, 255, 255, 0], dtype=torch.uint8))
    assert norm.mean == pytest.approx(0.5) and norm.std == pytest.approx(np.std([0, 1, 1, 0], ddof=1))
