"""Prove that an exported ONNX model computes what its PyTorch model computes, on real test images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist_seq.data import load_split
from fmnist_seq.errors import ExportError
from fmnist_seq.models import predict_logits
from fmnist_seq.runtime import run

BATCH = 1000


@dataclass(frozen=True)
class LabelledImages:
    """One prepared split as onnxruntime takes it: uint8 pixels (N, 28, 28) and int64 labels (N,).
    `split` names it in figures and messages."""

    split: str
    pixels: np.ndarray
    labels: np.ndarray

    @classmethod
    def load(cls, folder: str | Path, split: str) -> LabelledImages:
        images = load_split(folder, split)
        return cls(split=split, pixels=images.images.numpy(), labels=images.labels.numpy())


@dataclass(frozen=True)
class Parity:
    max_logit_diff: float
    mismatched_predictions: int
    onnx_accuracy: float
    torch_accuracy: float


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def torch_logits(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    return predict_logits(model, torch.from_numpy(pixels), batch_size).numpy()


def onnx_logits(session: Any, pixels: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """Logits of every image, `batch_size` images per call (int8 models depend on it: see quantization)."""
    return np.concatenate([run(session, pixels[i:i + batch_size])[0] for i in range(0, len(pixels), batch_size)])


def check_parity(reference_logits: np.ndarray, exported_logits: np.ndarray, labels: np.ndarray) -> Parity:
    return Parity(
        max_logit_diff=float(np.abs(reference_logits - exported_logits).max()),
        mismatched_predictions=int((reference_logits.argmax(1) != exported_logits.argmax(1)).sum()),
        onnx_accuracy=accuracy(exported_logits, labels),
        torch_accuracy=accuracy(reference_logits, labels),
    )


def require_parity(name: str, parity: Parity, max_logit_diff: float) -> None:
    if parity.mismatched_predictions or parity.max_logit_diff > max_logit_diff:
        raise ExportError(
            f"{name}: onnxruntime disagrees with PyTorch on the test set: {parity.mismatched_predictions} "
            f"different predicted classes, max |logit diff| {parity.max_logit_diff:.3g} (allowed "
            f"{max_logit_diff:g}). No model file was written. Try the other exporter "
            f"(export.exporters.{name}: dynamo|legacy) or check the onnxscript version (GRU linear_before_reset)")
