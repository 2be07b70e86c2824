"""Turn a trained model into an ONNX file that other apps can trust: export, parity gate, metadata, write.

The model already takes uint8 pixels and normalizes them itself; the exported graph only adds the
probabilities, softmax(logits / T) with the model's temperature fitted on the validation split. Nothing is written unless onnxruntime and PyTorch agree on both outputs for every test image.
"""

from __future__ import annotations

import io
import json
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx
import torch
from torch import nn

from fmnist_seq.atomic import write_bytes
from fmnist_seq.checkpoint import Checkpoint, checkpoint_sha256, load_checkpoint
from fmnist_seq.classes import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from fmnist_seq.config import ExportConfig, ModelConfig
from fmnist_seq.parity import (LabelledImages, accuracy, check_parity, onnx_logits, onnx_outputs, require_parity,
                               softmax_probabilities, torch_outputs)
from fmnist_seq.runtime import CPU, CUDA, INPUT_NAME, OUTPUT_NAMES, active_provider, open_session
from fmnist_seq.uncertainty import calibration_measures


class WithProbabilities(nn.Module):
    """uint8 pixels (batch, 28, 28) -> (logits, softmax(logits / temperature)); the temperature becomes a constant
    of the graph."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model.eval()
        self.temperature = temperature

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(pixels)
        return logits, softmax_probabilities(logits, self.temperature)


def strip_debug_metadata(graph: onnx.GraphProto) -> None:
    """Drop the exporter's debugging annotations (stack traces with this machine's file paths, source line
    numbers, shape-symbol counters that differ between exports in one process): they would make the file's
    bytes depend on where and when it was exported, not only on the model."""
    del graph.metadata_props[:]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        del value.metadata_props[:]
    for node in graph.node:
        del node.metadata_props[:]
        for attribute in node.attribute:  # control-flow nodes carry subgraphs
            if attribute.type == onnx.AttributeProto.GRAPH:
                strip_debug_metadata(attribute.g)
            for subgraph in attribute.graphs:
                strip_debug_metadata(subgraph)


def export_model(model: nn.Module, exporter: str, opset: int, temperature: float = 1.0) -> onnx.ModelProto:
    """The ONNX graph of `model` with probabilities (at `temperature`) added and a dynamic batch dimension."""
    wrapper = WithProbabilities(model, temperature)
    example = torch.randint(0, 256, (4, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    # The exporters print progress and warn about their internals; keep the stage log readable.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), dynamic_shapes={"pixels": {0: torch.export.Dim.DYNAMIC}},
                external_data=False, verbose=False)
            exported = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                wrapper, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)})
            exported = onnx.load_from_string(buffer.getvalue())
    strip_debug_metadata(exported.graph)
    return exported


@dataclass(frozen=True)
class ModelToExport:
    """A trained model to export: its name (export.models, train_<name>), its checkpoint, the file's hash, and the
    temperature its probabilities are divided by (the calibrate stage's; 1 leaves softmax(logits))."""

    name: str
    checkpoint: Checkpoint
    checkpoint_sha256: str
    temperature: float = 1.0

    @classmethod
    def load(cls, name: str, path: str | Path, expected: ModelConfig | None = None,
             temperature: float = 1.0) -> ModelToExport:
        """Read `path`, checked against the model block it must have been trained with (`expected`)."""
        return cls(name=name, checkpoint=load_checkpoint(path, expected), checkpoint_sha256=checkpoint_sha256(path),
                   temperature=temperature)


def model_metadata(model: ModelToExport, test_accuracy: float, exporter: str, opset: int) -> dict[str, str]:
    """What an app needs to use the file correctly, stored in the ONNX file itself.

    Only inputs that decide the file go in (the checkpoint's hash, its train block), never the git commit,
    so that the same checkpoint always exports to the same bytes.
    """
    ckpt = model.checkpoint
    mean, std = ckpt.model.normalization
    values: dict[str, Any] = {
        "model_name": model.name,
        "class_names": list(CLASS_NAMES),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", IMAGE_SIZE, IMAGE_SIZE],
                  "polarity": "light item on a dark background (0 = background), as in Fashion-MNIST",
                  "layout": "row-major: pixels[b, row, column]"},
        "outputs": {"logits": f"float32 [batch, {NUM_CLASSES}], unnormalized class scores",
                    "probabilities": f"float32 [batch, {NUM_CLASSES}], softmax(logits / temperature): calibrated"},
        # Fitted on the validation split (minimum NLL): a top probability of 0.9 is right about 90% of the time.
        "temperature": model.temperature,
        "normalization": {"mean": mean, "std": std, "formula": "(pixels / 255 - mean) / std, applied inside the graph"},
        "model_params": ckpt.train_params,
        "selected_epoch": ckpt.selected_epoch,
        "test_accuracy": test_accuracy,
        "exporter": f"torch {torch.__version__} ({exporter}), opset {opset}",
        "checkpoint_sha256": model.checkpoint_sha256,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def with_metadata(exported: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    onnx.helper.set_model_props(model, props)
    model.doc_string = "Fashion-MNIST classifier: uint8 pixels [batch,28,28] -> logits, probabilities"
    return model


@dataclass
class ExportedModel:
    """A written, verified ONNX file: its proto, its accuracy, its parity figures, the providers that ran it."""

    proto: onnx.ModelProto
    path: Path
    test_accuracy: float  # equal to PyTorch's (the parity gate allows no mismatched prediction), in its metadata
    figures: dict[str, Any]  # parity and size: what results/export/metrics.json declares
    providers: list[str] = field(default_factory=lambda: [CPU])  # CUDA first only where its session started


def export_checkpoint(model: ModelToExport, test: LabelledImages, cfg: ExportConfig, out_dir: str | Path,
                      providers: list[str], log: Callable[[str], None] = print) -> ExportedModel:
    """Export `model`, check it against PyTorch on `test` with the CPU provider, then write
    `<out_dir>/<name>.onnx`."""
    name, torch_model = model.name, model.checkpoint.model
    exported = export_model(torch_model, cfg.exporters[name], cfg.opset, model.temperature)
    cpu = open_session(exported.SerializeToString(), [CPU])
    shipped = onnx_outputs(cpu, test.pixels)
    parity = check_parity(torch_outputs(torch_model, test.pixels, temperature=model.temperature), shipped, test.labels)
    require_parity(name, parity, test.split, cfg.max_logit_diff, cfg.max_probability_diff)
    final = with_metadata(exported, model_metadata(model, parity.onnx_accuracy, cfg.exporters[name], cfg.opset))
    figures: dict[str, Any] = {"max_logit_diff": parity.max_logit_diff,
                               "max_probability_diff": parity.max_probability_diff,
                               "mismatched_predictions": parity.mismatched_predictions,
                               "temperature": model.temperature,
                               **{f"{test.split}_{key}": value for key, value in
                                  calibration_measures(shipped.probabilities, test.labels).items() if key != "brier"}}
    ran = [CPU]
    if providers[0] == CUDA:  # before writing, so that a required CUDA provider that fails leaves no file
        cuda = open_session(final.SerializeToString(), providers, require=cfg.provider == "cuda")
        if active_provider(cuda) == CUDA:
            ran = [CUDA, CPU]
            figures["cuda_test_accuracy"] = accuracy(onnx_logits(cuda, test.pixels), test.labels)
            log(f"{name}: CUDA provider test accuracy {figures['cuda_test_accuracy']:.4f}")
        else:  # provider auto: onnxruntime fell back to the CPU, so there is nothing more to measure
            log(f"{name}: onnxruntime's CUDA provider did not start (see its message above); CPU figures only")
    path = Path(out_dir) / f"{name}.onnx"
    write_bytes(path, final.SerializeToString())
    figures["file_bytes"] = path.stat().st_size
    log(f"{name}: {path} ({figures['file_bytes'] / 1e6:.2f} MB), max |logit diff| {parity.max_logit_diff:.2e}, "
        f"max |probability diff| {parity.max_probability_diff:.2e}, test accuracy {parity.onnx_accuracy:.4f}, "
        f"temperature {model.temperature:.4f}, test calibration error {100 * figures[f'{test.split}_ece']:.2f}%")
    return ExportedModel(proto=final, path=path, test_accuracy=parity.onnx_accuracy, figures=figures, providers=ran)
