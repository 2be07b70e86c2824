"""Raw IDX files -> stratified train/valid/test splits of uint8 pixels, saved once and read back by later stages.

The data keeps one form from here on: uint8 pixels, exactly as in the IDX files. The train split's pixel
statistics are computed here and stored beside the splits; the model owns the normalization that uses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from fmnist_seq.atomic import write_json, write_torch
from fmnist_seq.classes import CLASS_KEYS, NUM_CLASSES
from fmnist_seq.errors import DataError

# The raw files, by role; their expected hashes and counts live in params.yaml (download.files).
RAW_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class Normalization:
    """Pixel statistics of the train split, on the [0, 1] scale: x = (pixel / 255 - mean) / std."""

    mean: float
    std: float

    @classmethod
    def fit(cls, images_uint8: torch.Tensor) -> "Normalization":
        pixels = images_uint8.double() / 255.0  # double: a float32 sum over 42M pixels drifts
        return cls(mean=pixels.mean().item(), std=pixels.std().item())


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8 pixels, 0 = background
    labels: torch.Tensor  # (N,) int64
    source_index: torch.Tensor  # (N,) int64, index in the raw file it came from

    def __len__(self) -> int:
        return len(self.labels)


def read_raw(raw_dir: str | Path) -> dict[str, torch.Tensor]:
    """The four raw arrays, decoded by torchvision's IDX readers."""
    raw_dir = Path(raw_dir)
    arrays = {}
    for role, name in RAW_FILES.items():
        path = raw_dir / name
        if not path.is_file():
            raise DataError(f"{path} is missing: run the download stage first (`dvc repro download`)")
        reader = read_image_file if role.endswith("images") else read_label_file
        arrays[role] = reader(str(path))
    for part in ("train", "test"):
        n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_img != n_lab:
            raise DataError(f"{raw_dir}: {part} has {n_img} images but {n_lab} labels")
    return arrays


def stratified_split(labels: torch.Tensor, valid_ratio: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, valid): each class gives round(n_class * valid_ratio) items to valid, at random."""
    generator = torch.Generator().manual_seed(seed)
    train_parts, valid_parts = [], []
    for cls in range(NUM_CLASSES):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_valid = round(len(members) * valid_ratio)
        valid_parts.append(members[:n_valid])
        train_parts.append(members[n_valid:])
    train_idx, valid_idx = torch.cat(train_parts).sort().values, torch.cat(valid_parts).sort().values
    if len(train_idx) == 0 or len(valid_idx) == 0:
        raise DataError(f"valid_ratio {valid_ratio} leaves an empty split of {len(labels)} images")
    return train_idx, valid_idx


def prepare_splits(raw: dict[str, torch.Tensor], valid_ratio: float, seed: int
                   ) -> tuple[dict[str, Split], Normalization]:
    train_idx, valid_idx = stratified_split(raw["train_labels"], valid_ratio, seed)
    # Statistics come from the train split alone, so nothing about valid or test leaks into training.
    norm = Normalization.fit(raw["train_images"][train_idx])
    splits = {
        "train": Split(raw["train_images"][train_idx], raw["train_labels"][train_idx].long(), train_idx),
        "valid": Split(raw["train_images"][valid_idx], raw["train_labels"][valid_idx].long(), valid_idx),
        "test": Split(raw["test_images"], raw["test_labels"].long(), torch.arange(len(raw["test_labels"]))),
    }
    return splits, norm


def save_prepared(splits: dict[str, Split], norm: Normalization, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    for name, split in splits.items():
        write_torch(out_dir / f"{name}.pt", {"images": split.images.contiguous(), "labels": split.labels,
                                              "source_index": split.source_index})
    write_json(out_dir / STATS_FILE, {"mean": norm.mean, "std": norm.std})


def load_split(prepared_dir: str | Path, name: str) -> Split:
    path = Path(prepared_dir) / f"{name}.pt"
    if not path.is_file():
        raise DataError(f"{path} is missing: run the prepare stage first (`dvc repro prepare`)")
    try:
        blob = torch.load(path, weights_only=True)
        split = Split(blob["images"], blob["labels"], blob["source_index"])
    except Exception as exc:  # a truncated or foreign file; say which one
        raise DataError(f"{path} is not a prepared split ({exc}); rerun `dvc repro prepare`") from None
    if split.images.dtype != torch.uint8:  # written by an older version that stored normalized floats
        raise DataError(f"{path} holds {split.images.dtype} images, not uint8 pixels; rerun `dvc repro prepare`")
    return split


def load_normalization(prepared_dir: str | Path) -> Normalization:
    path = Path(prepared_dir) / STATS_FILE
    try:
        stats = json.loads(path.read_text())
        return Normalization(mean=float(stats["mean"]), std=float(stats["std"]))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path} is missing or invalid ({exc}); rerun `dvc repro prepare`") from None


def data_metrics(splits: dict[str, Split], norm: Normalization) -> dict[str, float | int]:
    """Images per split and the train split's pixel statistics: five numbers, so that `dvc exp show` stays
    narrow when a sweep changes the split."""
    return {**{f"{name}_images": len(split) for name, split in splits.items()},
            "pixel_mean": norm.mean, "pixel_std": norm.std}


def per_class_counts(splits: dict[str, Split]) -> dict[str, dict[str, int]]:
    """Images of each class in each split (the split is stratified, so they stay in proportion)."""
    return {name: dict(zip(CLASS_KEYS, torch.bincount(split.labels, minlength=NUM_CLASSES).tolist()))
            for name, split in splits.items()}


def examples_per_class(split: Split) -> list[int]:
    """Index of the first image of each class, for the 'one example per class' figure."""
    found = []
    for cls in range(NUM_CLASSES):
        members = torch.nonzero(split.labels == cls).flatten()
        if len(members):
            found.append(int(members[0]))
    return found
