"""onnxruntime sessions and the contract of an exported model; imports no PyTorch, for light apps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fmnist_seq.errors import ExportError

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probabilities")

CUDA_HINT = ("install the GPU build: `pip uninstall -y onnxruntime && pip install onnxruntime-gpu==1.32.0` "
             "(needs an NVIDIA driver and the CUDA/cuDNN libraries it names), or use provider cpu")


def select_providers(choice: str) -> list[str]:
    """onnxruntime execution providers for 'auto' | 'cpu' | 'cuda'; CPU always stays as the fallback."""
    available = ort.get_available_providers()
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ExportError(f"provider cuda: this onnxruntime has no CUDAExecutionProvider; {CUDA_HINT}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    raise ExportError(f"unknown provider {choice!r}: use auto, cpu or cuda")


def open_session(model: str | Path | bytes, providers: list[str]) -> ort.InferenceSession:
    """An inference session, with a clear error for a missing or broken model file."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise ExportError(f"{path}: model file not found")
        model = str(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        name = model if isinstance(model, str) else "model bytes"
        raise ExportError(f"{name}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None


def metadata(session: ort.InferenceSession) -> dict[str, Any]:
    """The model's custom metadata, JSON values decoded."""
    decoded: dict[str, Any] = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    return decoded


def run(session: ort.InferenceSession, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) for uint8 pixels of shape (batch, 28, 28)."""
    logits, probabilities = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(pixels, np.uint8)})
    return logits, probabilities
