"""Export a checkpoint to ONNX with normalization inside the graph, then prove it matches PyTorch."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tempfile
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from fmnist_seq.atomic import write_bytes
from fmnist_seq.checkpoint import Checkpoint
from fmnist_seq.classes import CLASS_NAMES, IMAGE_SIZE
from fmnist_seq.config import ExportConfig
from fmnist_seq.errors import ExportError
from fmnist_seq.runtime import CPU, CUDA, INPUT_NAME, OUTPUT_NAMES, active_provider, open_session, run


class PixelClassifier(nn.Module):
    """uint8 pixels (batch, 28, 28) -> (logits, probabilities); callers need no statistics."""

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.to(torch.float32) / 255.0 - self.mean) / self.std  # exports as Cast/Div/Sub/Div
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


def export_bytes(wrapper: PixelClassifier, exporter: str, opset: int) -> bytes:
    """Serialized ONNX model with a dynamic batch dimension."""
    example = torch.randint(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    buffer = io.BytesIO()
    # The exporters print progress and warn about their internals; keep the stage log readable.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), dynamic_shapes={"pixels": {0: torch.export.Dim.DYNAMIC}},
                external_data=False, verbose=False)
            return program.model_proto.SerializeToString()
        torch.onnx.export(
            wrapper, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_axes={INPUT_NAME: {0: "batch"}, "logits": {0: "batch"},
                                                            "probabilities": {0: "batch"}})
    return buffer.getvalue()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def model_metadata(name: str, ckpt: Checkpoint, test_accuracy: float, exporter: str, opset: int) -> dict[str, str]:
    """What an app needs to use the file correctly, stored in the ONNX file itself."""
    values: dict[str, Any] = {
        "model_name": name,
        "class_names": list(CLASS_NAMES),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", IMAGE_SIZE, IMAGE_SIZE],
                  "polarity": "light item on a dark background (0 = background), as in Fashion-MNIST",
                  "layout": "row-major: pixels[b, row, column]"},
        "outputs": {"logits": "float32 [batch, 10], unnormalized class scores",
                    "probabilities": "float32 [batch, 10], softmax of logits"},
        "normalization": {"mean": ckpt.normalization.mean, "std": ckpt.normalization.std,
                          "formula": "(pixels / 255 - mean) / std, applied inside the graph"},
        "model_params": ckpt.train_params,
        "selected_epoch": ckpt.selected_epoch,
        "test_accuracy": test_accuracy,
        "exporter": f"torch {torch.__version__} ({exporter}), opset {opset}",
        "git_commit": git_commit(),
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def with_metadata(exported: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    onnx.helper.set_model_props(model, props)
    model.doc_string = "Fashion-MNIST classifier: uint8 pixels [batch,28,28] -> logits, probabilities"
    return model


@dataclass
class Parity:
    max_logit_diff: float
    mismatched_predictions: int
    onnx_accuracy: float
    torch_accuracy: float


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def torch_outputs(wrapper: PixelClassifier, pixels: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([wrapper(torch.from_numpy(pixels[i:i + batch_size]))[0]
                          for i in range(0, len(pixels), batch_size)]).numpy()


def onnx_outputs(session: Any, pixels: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    return np.concatenate([run(session, pixels[i:i + batch_size])[0] for i in range(0, len(pixels), batch_size)])


def check_parity(reference_logits: np.ndarray, onnx_logits: np.ndarray, labels: np.ndarray) -> Parity:
    return Parity(
        max_logit_diff=float(np.abs(reference_logits - onnx_logits).max()),
        mismatched_predictions=int((reference_logits.argmax(1) != onnx_logits.argmax(1)).sum()),
        onnx_accuracy=accuracy(onnx_logits, labels),
        torch_accuracy=accuracy(reference_logits, labels),
    )


def require_parity(name: str, parity: Parity, max_logit_diff: float) -> None:
    if parity.mismatched_predictions or parity.max_logit_diff > max_logit_diff:
        raise ExportError(
            f"{name}: onnxruntime disagrees with PyTorch on the test set: {parity.mismatched_predictions} "
            f"different predicted classes, max |logit diff| {parity.max_logit_diff:.3g} (allowed "
            f"{max_logit_diff:g}). No model file was written. Try the other exporter "
            f"(export.exporters.{name}: dynamo|legacy) or check the onnxscript version (GRU linear_before_reset)")


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


# IR 10, as the exporter writes. onnx.helper's default is the installed onnx's newest IR (14), which
# onnxruntime-gpu 1.31, a build this package supports, cannot load.
MODEL_IR_VERSION = 10


def matmul_model(a: np.ndarray) -> onnx.ModelProto:
    """c = a @ b with b = `a` stored in the graph: the reference workload for the matmul rate."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, list(a.shape))],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, list(a.shape))],
        [onnx.numpy_helper.from_array(a, "b")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)],
                                  ir_version=MODEL_IR_VERSION)


def matmul_gflops(seconds: float, size: int = 1024) -> dict[str, float]:
    """fp32 matmul rate of PyTorch and of onnxruntime (CPU) on this machine: the ceiling both engines share."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    session = open_session(matmul_model(a).SerializeToString(), ["CPUExecutionProvider"])
    ta = torch.from_numpy(a)
    flops = 2 * size ** 3
    return {"matmul_gflops_torch": round(flops / time_per_call(lambda: ta @ ta, seconds) / 1e9, 1),
            "matmul_gflops_onnxruntime": round(flops / time_per_call(lambda: session.run(None, {"a": a}), seconds) / 1e9, 1)}


def benchmark(wrapper: PixelClassifier, sessions: dict[str, Any], pixels: np.ndarray, batch_size: int,
              seconds: float) -> dict[str, float]:
    """Throughput at `batch_size` and single-image latency, each engine timed in alternating rounds."""
    batch, single = pixels[:batch_size], pixels[:1]
    engines: dict[str, Callable[[np.ndarray], Any]] = {"torch": lambda x: torch_outputs(wrapper, x)}
    engines.update({label: (lambda x, s=s: run(s, x)) for label, s in sessions.items()})
    per_round = seconds / 3
    results: dict[str, list[float]] = {f"{e}_{k}": [] for e in engines for k in ("batch", "single")}
    for _ in range(3):  # interleave engines so machine noise hits all of them alike
        for label, fn in engines.items():
            results[f"{label}_batch"].append(time_per_call(lambda: fn(batch), per_round / 2))
            results[f"{label}_single"].append(time_per_call(lambda: fn(single), per_round / 2))
    figures: dict[str, float] = {}
    for label in engines:
        batch_s, single_s = np.median(results[f"{label}_batch"]), np.median(results[f"{label}_single"])
        figures[f"{label}_images_per_s"] = round(len(batch) / batch_s, 1)
        figures[f"{label}_latency_ms"] = round(1000 * single_s, 3)
    for label in sessions:
        figures[f"{label}_speedup"] = round(figures[f"{label}_images_per_s"] / figures["torch_images_per_s"], 3)
        figures[f"{label}_latency_speedup"] = round(figures["torch_latency_ms"] / figures[f"{label}_latency_ms"], 3)
    return figures


def session_from_proto(model: onnx.ModelProto, providers: list[str], require: bool = False) -> Any:
    return open_session(model.SerializeToString(), providers, require=require)


def quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """int8 dynamic quantization (weights int8, activations quantized on the fly); RNN/GRU nodes stay fp32."""
    root = logging.getLogger()
    level = root.level
    source = onnx.ModelProto()
    source.CopyFrom(model)
    # The exporter's intermediate shape annotations are optional, and some onnxruntime quantizers (1.31, the
    # newest GPU build) reject them in their shape inference; without them the shapes are inferred afresh.
    del source.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(source.SerializeToString())
        root.setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process is noise in the stage log
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        int8 = onnx.load(dst)
    # Some quantizers stamp the newest IR version of the installed onnx package, which older onnxruntime
    # builds (onnxruntime-gpu, onnxruntime-node) cannot load; the quantized operators need nothing newer.
    int8.ir_version = model.ir_version
    return int8


def raw_pixels(images: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """Undo the stored normalization: the uint8 pixels an app would feed the exported model."""
    pixels = torch.round((images * std + mean) * 255.0)
    if (pixels - (images * std + mean) * 255.0).abs().max() > 0.01:
        raise ExportError("prepared test images do not map back to whole pixel values; rerun `dvc repro prepare`")
    return pixels.clamp(0, 255).to(torch.uint8).numpy()


def export_checkpoint(name: str, ckpt: Checkpoint, cfg: ExportConfig, pixels: np.ndarray, labels: np.ndarray,
                      out_dir: str | Path, providers: list[str], log: Callable[[str], None] = print) -> dict:
    """Export, verify on the CPU provider against PyTorch, then write `<name>.onnx`; return its figures.

    Nothing is written unless onnxruntime and PyTorch agree on every test image.
    """
    wrapper = PixelClassifier(ckpt.model, ckpt.normalization.mean, ckpt.normalization.std)
    exported = onnx.load_from_string(export_bytes(wrapper, cfg.exporters[name], cfg.opset))
    cpu = session_from_proto(exported, ["CPUExecutionProvider"])
    parity = check_parity(torch_outputs(wrapper, pixels), onnx_outputs(cpu, pixels), labels)
    require_parity(name, parity, cfg.max_logit_diff)
    final = with_metadata(exported,
                          model_metadata(name, ckpt, parity.onnx_accuracy, cfg.exporters[name], cfg.opset))
    sessions, extra = {"onnxruntime_cpu": cpu}, {}
    if providers[0] == CUDA:  # before writing, so that a required CUDA provider that fails leaves no file
        cuda = session_from_proto(final, providers, require=cfg.provider == "cuda")
        if active_provider(cuda) == CUDA:
            sessions["onnxruntime_cuda"] = cuda
            extra["test_accuracy_onnxruntime_cuda"] = accuracy(onnx_outputs(cuda, pixels), labels)
            log(f"{name}: CUDA provider test accuracy {extra['test_accuracy_onnxruntime_cuda']:.4f}")
        else:  # provider auto: onnxruntime fell back to the CPU, so there is nothing more to measure
            log(f"{name}: onnxruntime's CUDA provider did not start (see its message above); CPU figures only")
    out_path = Path(out_dir) / f"{name}.onnx"
    write_bytes(out_path, final.SerializeToString())
    figures: dict[str, Any] = {
        "exporter": cfg.exporters[name], "opset": cfg.opset, "file_bytes": out_path.stat().st_size,
        "max_logit_diff": parity.max_logit_diff, "mismatched_predictions": parity.mismatched_predictions,
        "test_accuracy_onnxruntime": parity.onnx_accuracy, "test_accuracy_torch": parity.torch_accuracy, **extra,
        "bench_batch_size": cfg.bench_batch_size,
        **benchmark(wrapper, sessions, pixels, cfg.bench_batch_size, cfg.bench_seconds),
        **matmul_gflops(cfg.bench_seconds / 4),
    }
    log(f"{name}: {out_path} ({figures['file_bytes'] / 1e6:.2f} MB), max |logit diff| "
        f"{parity.max_logit_diff:.2e}, test accuracy {parity.onnx_accuracy:.4f}, onnxruntime "
        f"{figures['onnxruntime_cpu_speedup']:.2f}x PyTorch at batch {cfg.bench_batch_size}")
    if name in cfg.quantize:
        figures["int8"] = quantize_variant(name, final, cfg, pixels, labels, parity.onnx_accuracy, out_dir, log)
        if "images_per_s" in figures["int8"]:
            figures["int8"]["speedup_vs_torch"] = round(
                figures["int8"]["images_per_s"] / figures["torch_images_per_s"], 3)
    return figures


def providers_that_ran(figures_by_model: dict[str, dict]) -> list[str]:
    """The onnxruntime providers the export actually timed: CUDA only where its session really started."""
    ran_on_cuda = any("onnxruntime_cuda_images_per_s" in figures for figures in figures_by_model.values())
    return ([CUDA] if ran_on_cuda else []) + [CPU]


def quantize_variant(name: str, final: onnx.ModelProto, cfg: ExportConfig, pixels: np.ndarray, labels: np.ndarray,
                     fp32_accuracy: float, out_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Write `<name>.int8.onnx` only if its test accuracy is within the allowed drop of fp32.

    Dynamic quantization scales the activations per call, over the whole batch, so an image's prediction
    can depend on the other images in its batch (fp32 predictions do not). The accuracy that counts is the
    worse of one image per call (an app classifying single photos) and batches of 1000.
    """
    int8 = quantized(final)
    session = session_from_proto(int8, ["CPUExecutionProvider"])
    by_batch = {size: accuracy(onnx_outputs(session, pixels, size), labels) for size in (1, 1000)}
    int8_accuracy = min(by_batch.values())
    drop = fp32_accuracy - int8_accuracy
    kept = drop <= cfg.quantize_max_accuracy_drop
    result: dict[str, Any] = {"test_accuracy": int8_accuracy, "test_accuracy_batch_1": by_batch[1],
                              "test_accuracy_batch_1000": by_batch[1000], "accuracy_drop": drop, "kept": kept}
    # The quantizer copies the fp32 file's metadata: its test accuracy must become the int8 figure.
    props = {prop.key: prop.value for prop in int8.metadata_props}
    props["test_accuracy"] = json.dumps(int8_accuracy)
    props["quantization"] = ("int8 dynamic: weights int8, activations scaled per call over the whole batch, so a "
                             "prediction can depend on the other images in the batch; test_accuracy is the worse "
                             "of batch 1 and batch 1000")
    onnx.helper.set_model_props(int8, props)
    result["file_bytes"] = len(int8.SerializeToString())
    if kept:
        write_bytes(Path(out_dir) / f"{name}.int8.onnx", int8.SerializeToString())
        fp32 = session_from_proto(final, ["CPUExecutionProvider"])
        batch = pixels[:cfg.bench_batch_size]
        fp32_s = time_per_call(lambda: run(fp32, batch), cfg.bench_seconds / 2)
        int8_s = time_per_call(lambda: run(session, batch), cfg.bench_seconds / 2)
        result["images_per_s"] = round(len(batch) / int8_s, 1)
        result["speedup_vs_fp32"] = round(fp32_s / int8_s, 3)
    log(f"{name}: int8 variant {'kept' if kept else 'dropped'} (accuracy {int8_accuracy:.4f}, "
        f"drop {100 * drop:.2f} pts, {result['file_bytes'] / 1e6:.2f} MB)")
    return result
