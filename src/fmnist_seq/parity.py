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
class Outputs:
    """Both outputs of the exported graph for the same images, in its order: what apps read."""

    logits: np.ndarray  # (N, classes)
    probabilities: np.ndarray  # (N, classes), softmax(logits / temperature)


@dataclass(frozen=True)
class Gap:
    """How far onnxruntime's values of one output are from PyTorch's."""

    max_diff: float  # NaN where either engine gave a NaN
    nonfinite_onnx: int  # NaN or inf values in onnxruntime's output
    nonfinite_torch: int  # the same in PyTorch's

    @classmethod
    def between(cls, reference: np.ndarray, exported: np.ndarray) -> Gap:
        return cls(max_diff=float(np.abs(reference - exported).max()),
                   nonfinite_onnx=int((~np.isfinite(exported)).sum()),
                   nonfinite_torch=int((~np.isfinite(reference)).sum()))

    def within(self, allowed: float) -> bool:
        # `diff > allowed` would let a NaN through (it compares false either way). A non-finite value fails even
        # where both engines give it: no app can use it.
        return self.nonfinite_onnx == 0 and self.nonfinite_torch == 0 and self.max_diff <= allowed

    def describe(self, output: str, allowed: float) -> str:
        text = f"max |{output} diff| {self.max_diff:.3g} (allowed {allowed:g})"
        if self.nonfinite_onnx or self.nonfinite_torch:
            text += (f", NaN or inf in {self.nonfinite_onnx} of onnxruntime's and {self.nonfinite_torch} of "
                     f"PyTorch's {output}")
        return text


@dataclass(frozen=True)
class Parity:
    logits: Gap
    probabilities: Gap
    mismatched_predictions: int
    onnx_accuracy: float
    torch_accuracy: float

    @property
    def max_logit_diff(self) -> float:
        return self.logits.max_diff

    @property
    def max_probability_diff(self) -> float:
        return self.probabilities.max_diff


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def softmax_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The probabilities output, softmax(logits / temperature): the exported graph adds it to the model's logits
    with the model's fitted temperature (calibration.py), and PyTorch's reference too."""
    return torch.softmax(logits / temperature, dim=1)


def torch_logits(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    return predict_logits(model, torch.from_numpy(pixels), batch_size).numpy()


def torch_outputs(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = BATCH,
                  temperature: float = 1.0) -> Outputs:
    logits = torch_logits(model, pixels, batch_size)
    return Outputs(logits=logits, probabilities=softmax_probabilities(torch.from_numpy(logits), temperature).numpy())


def onnx_outputs(session: Any, pixels: np.ndarray, batch_size: int = BATCH) -> Outputs:
    """Both outputs for every image, `batch_size` images per call (int8 models depend on it: see quantization)."""
    calls = [run(session, pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return Outputs(logits=np.concatenate([logits for logits, _ in calls]),
                   probabilities=np.concatenate([probabilities for _, probabilities in calls]))


def onnx_logits(session: Any, pixels: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    return onnx_outputs(session, pixels, batch_size).logits


def check_parity(reference: Outputs, exported: Outputs, labels: np.ndarray) -> Parity:
    return Parity(
        logits=Gap.between(reference.logits, exported.logits),
        probabilities=Gap.between(reference.probabilities, exported.probabilities),
        mismatched_predictions=int((reference.logits.argmax(1) != exported.logits.argmax(1)).sum()),
        onnx_accuracy=accuracy(exported.logits, labels),
        torch_accuracy=accuracy(reference.logits, labels),
    )


def require_parity(name: str, parity: Parity, split: str, max_logit_diff: float, max_probability_diff: float) -> None:
    """Stop the export unless onnxruntime predicts every class PyTorch does and both outputs stay within their
    tolerances; the message names what broke the gate."""
    broken = [f"{parity.mismatched_predictions} different predicted classes"] if parity.mismatched_predictions else []
    broken += [gap.describe(output, allowed) for output, gap, allowed in (
        ("logits", parity.logits, max_logit_diff), ("probabilities", parity.probabilities, max_probability_diff))
        if not gap.within(allowed)]
    if not broken:
        return
    if parity.logits.nonfinite_torch or parity.probabilities.nonfinite_torch:
        fix = f"PyTorch's own outputs are not finite: the checkpoint is broken; retrain it (dvc repro train_{name})"
    else:
        fix = (f"Try the other exporter (export.exporters.{name}: dynamo|legacy) or check the onnxscript version "
               f"(GRU linear_before_reset)")
    raise ExportError(f"{name}: onnxruntime disagrees with PyTorch on the {split} set: {'; '.join(broken)}. "
                      f"No model file was written. {fix}")
