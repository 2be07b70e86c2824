"""Time inference engines side by side on this machine: throughput, single-image latency, the matmul ceiling.

Measurements of the machine, not results: the export stage writes them to a timings file, never to its
declared metrics. Engines are timed in alternating rounds so that machine noise hits all of them alike, with
PyTorch and onnxruntime pinned to the same number of threads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch

from fmnist_seq.models import predict_logits
from fmnist_seq.runtime import CPU, open_session, run

# IR 10, as the exporter writes. onnx.helper's default is the installed onnx's newest IR (14), which
# onnxruntime-gpu 1.31, a build this package supports, cannot load.
MODEL_IR_VERSION = 10


def time_per_call(fn: Callable[[], Any], seconds: float) -> float:
    """Median seconds per call of `fn` over about `seconds` of repeats (after one warm-up call)."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_engine(model: torch.nn.Module) -> Callable[[np.ndarray], Any]:
    return lambda pixels: predict_logits(model, torch.from_numpy(pixels), len(pixels))


def session_engine(session: Any) -> Callable[[np.ndarray], Any]:
    return lambda pixels: run(session, pixels)


def benchmark(engines: dict[str, Callable[[np.ndarray], Any]], pixels: np.ndarray, batch_size: int,
              seconds: float, reference: str = "torch") -> dict[str, float]:
    """Images/s at `batch_size` and single-image latency of each engine, and each one's speed-up over
    `reference`, from three alternating rounds sharing `seconds`."""
    batch, single = pixels[:batch_size], pixels[:1]
    per_call = seconds / 3 / len(engines) / 2
    samples: dict[str, list[float]] = {f"{e}_{k}": [] for e in engines for k in ("batch", "single")}
    for _ in range(3):
        for label, fn in engines.items():
            samples[f"{label}_batch"].append(time_per_call(lambda: fn(batch), per_call))
            samples[f"{label}_single"].append(time_per_call(lambda: fn(single), per_call))
    figures: dict[str, float] = {}
    for label in engines:
        figures[f"{label}_images_per_s"] = round(len(batch) / float(np.median(samples[f"{label}_batch"])), 1)
        figures[f"{label}_latency_ms"] = round(1000 * float(np.median(samples[f"{label}_single"])), 3)
    for label in engines:
        if label != reference:
            figures[f"{label}_speedup"] = round(
                figures[f"{label}_images_per_s"] / figures[f"{reference}_images_per_s"], 3)
            figures[f"{label}_latency_speedup"] = round(
                figures[f"{reference}_latency_ms"] / figures[f"{label}_latency_ms"], 3)
    return figures


def time_model(model: torch.nn.Module, files: dict[str, tuple[Path, list[str]]], pixels: np.ndarray,
               batch_size: int, seconds: float, threads: int) -> dict[str, float]:
    """PyTorch against each ONNX file (label -> (path, providers)), both engines on `threads` threads."""
    torch.set_num_threads(threads)
    engines = {"torch": torch_engine(model)}
    for label, (path, providers) in files.items():
        engines[label] = session_engine(open_session(path, providers, threads=threads))
    return benchmark(engines, pixels, batch_size, seconds)


def matmul_model(a: np.ndarray) -> onnx.ModelProto:
    """c = a @ b with b = `a` stored in the graph: the reference workload for the matmul rate."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, list(a.shape))],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, list(a.shape))],
        [onnx.numpy_helper.from_array(a, "b")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)],
                                  ir_version=MODEL_IR_VERSION)


def matmul_gflops(seconds: float, threads: int, size: int = 1024) -> dict[str, float]:
    """fp32 matmul rate of PyTorch and of onnxruntime (CPU) here: the ceiling both engines share."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    session = open_session(matmul_model(a).SerializeToString(), [CPU], threads=threads)
    ta = torch.from_numpy(a)
    flops = 2 * size ** 3
    return {"matmul_gflops_torch": round(flops / time_per_call(lambda: ta @ ta, seconds) / 1e9, 1),
            "matmul_gflops_onnxruntime": round(flops / time_per_call(lambda: session.run(None, {"a": a}),
                                                                     seconds) / 1e9, 1)}
