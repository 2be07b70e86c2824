"""onnxruntime sessions and the contract of an exported model; imports no PyTorch, for light apps."""

from __future__ import annotations

import json
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fmnist_seq.classes import IMAGE_SIZE, NUM_CLASSES
from fmnist_seq.errors import InferenceError

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probabilities")
PROBABILITIES = OUTPUT_NAMES[1]
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"

# onnxruntime-gpu trails the CPU build by a release; 1.31.1 is built for CUDA 13 and cuDNN 9, the same majors
# as the nvidia-*-cu13 wheels that the pinned PyTorch installs, so those libraries serve both. The extras bring
# the same libraries to an app without PyTorch. `make onnxruntime-gpu` reads this pin from here.
GPU_BUILD = "onnxruntime-gpu[cuda,cudnn]==1.31.1"
CUDA_HINT = (f"install the GPU build: `pip uninstall -y onnxruntime && pip install '{GPU_BUILD}'` "
             "(needs an NVIDIA GPU and driver for CUDA 13), or use provider cpu")


def select_providers(choice: str) -> list[str]:
    """onnxruntime execution providers for 'auto' | 'cpu' | 'cuda'; CPU always stays as the fallback."""
    available = ort.get_available_providers()
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        if CUDA not in available:
            raise InferenceError(f"provider cuda: this onnxruntime has no CUDAExecutionProvider; {CUDA_HINT}")
        return [CUDA, CPU]
    if choice == "auto":
        return ([CUDA] if CUDA in available else []) + [CPU]
    raise InferenceError(f"unknown provider {choice!r}: use auto, cpu or cuda")


def _load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels before the CUDA provider looks for them.

    Importing a CUDA build of PyTorch does this already; otherwise onnxruntime's own preloader must.
    It reports missing libraries with print(), which would corrupt `fmnist-predict --json`: send it to stderr.
    """
    preload = getattr(ort, "preload_dlls", None)
    torch = sys.modules.get("torch")
    torch_loaded_cuda = torch is not None and getattr(getattr(torch, "version", None), "cuda", None)
    if preload is not None and not torch_loaded_cuda:
        with redirect_stdout(sys.stderr):
            preload()


def open_session(model: str | Path | bytes, providers: list[str], *, require: bool = False,
                 threads: int | None = None) -> ort.InferenceSession:
    """An inference session, with a clear error for a missing or broken model file.

    `threads` pins onnxruntime's intra-op threads (benchmarks set it equal to PyTorch's); None keeps its default.

    A provider that cannot start (the GPU build on a machine without a GPU or its libraries) is skipped by
    onnxruntime itself, which logs why and carries on with the next one. `require=True` turns that
    silent fallback into an error, for callers that were told to use the first provider.
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.is_dir():
            raise InferenceError(f"{path}: a folder, not a model file")
        if not path.is_file():
            raise InferenceError(f"{path}: model file not found")
        model = str(path)
    name = model if isinstance(model, str) else "model bytes"
    if CUDA in providers:
        _load_cuda_libraries()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise InferenceError(f"{name}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
    if require and providers[0] not in session.get_providers():
        if providers[0] not in ort.get_available_providers():
            fix = CUDA_HINT
        else:  # the GPU build is there; the machine lacks what it loads
            fix = ("onnxruntime's message above names what is missing: check the driver with `nvidia-smi`, and "
                   f"that CUDA 13 and cuDNN 9 are installed (`pip install '{GPU_BUILD}'` brings them), "
                   "or use provider cpu")
        raise InferenceError(f"{name}: onnxruntime could not start {providers[0]} and would run on "
                          f"{active_provider(session)} instead; {fix}")
    return session


def active_provider(session: ort.InferenceSession) -> str:
    """The highest-priority provider that started (nodes it cannot run still fall to the CPU)."""
    return session.get_providers()[0]


def metadata(session: ort.InferenceSession) -> dict[str, Any]:
    """The model's custom metadata, JSON values decoded."""
    decoded: dict[str, Any] = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    return decoded


def _describe(node: Any) -> str:
    dims = ", ".join(str(d) if d is not None else "?" for d in node.shape)
    return f"{node.name!r} {node.type} [{dims}]"


def _dim_is(dim: Any, size: int) -> bool:
    """A fixed dimension must be `size`; a named (symbolic) or unknown one can take it."""
    return not isinstance(dim, int) or dim == size


def check_classifier(session: ort.InferenceSession, name: str) -> None:
    """Refuse, once and before any image, a model that is not an image classifier of this project's contract:
    one input `pixels` uint8 [batch, 28, 28], an output `probabilities` float32 [batch, classes], and class
    names in the metadata (when given) for each class. The message names what does not match."""
    expected = f"one input {INPUT_NAME!r} tensor(uint8) [batch, {IMAGE_SIZE}, {IMAGE_SIZE}]"
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InferenceError(f"{name}: not a classifier of this project: it takes {len(inputs)} inputs "
                             f"({', '.join(_describe(i) for i in inputs)}); expected {expected}")
    (pixels,) = inputs
    if (pixels.name != INPUT_NAME or pixels.type != "tensor(uint8)" or len(pixels.shape) != 3
            or not all(_dim_is(d, IMAGE_SIZE) for d in pixels.shape[1:])):
        raise InferenceError(f"{name}: not a classifier of this project: its input is {_describe(pixels)}; "
                             f"expected {expected}")
    outputs = {o.name: o for o in session.get_outputs()}
    probabilities = outputs.get(PROBABILITIES)
    if probabilities is None:
        raise InferenceError(f"{name}: not a classifier of this project: no {PROBABILITIES!r} output (it has "
                             f"{', '.join(_describe(o) for o in outputs.values())})")
    if probabilities.type != "tensor(float)" or len(probabilities.shape) != 2:
        raise InferenceError(f"{name}: not a classifier of this project: its output is {_describe(probabilities)}; "
                             f"expected {PROBABILITIES!r} tensor(float) [batch, classes]")
    classes = probabilities.shape[1]
    class_names = metadata(session).get("class_names")
    if class_names is not None and (not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names)
                                    or not _dim_is(classes, len(class_names))):
        raise InferenceError(f"{name}: its \"class_names\" metadata is not a list of {classes} names "
                             f"(one per output column)")


def class_names(session: ort.InferenceSession) -> list[str]:
    """The model's class names, or their indices for a model without them (after check_classifier)."""
    names = metadata(session).get("class_names")
    if names is None:
        classes = session.get_outputs()[[o.name for o in session.get_outputs()].index(PROBABILITIES)].shape[1]
        names = [str(i) for i in range(classes if isinstance(classes, int) else NUM_CLASSES)]
    return names


def probabilities_of(session: ort.InferenceSession, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities for uint8 pixels (batch, 28, 28): the one output a classifier must have."""
    (probabilities,) = session.run([PROBABILITIES], {INPUT_NAME: np.ascontiguousarray(pixels, np.uint8)})
    return probabilities


def run(session: ort.InferenceSession, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) for uint8 pixels of shape (batch, 28, 28)."""
    logits, probabilities = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(pixels, np.uint8)})
    return logits, probabilities
