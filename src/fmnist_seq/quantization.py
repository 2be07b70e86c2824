"""An int8 variant of an exported model (dynamic quantization), kept only within its accuracy budget on the
validation split; its test accuracy is reported, never used to decide.

`quantize_dynamic` turns MatMul/Gemm weights into int8 and scales the activations on the fly; it leaves RNN
and GRU nodes alone, so it shrinks the RNN's large Linear and does nothing for the GRU.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from fmnist_seq.parity import LabelledImages, accuracy, onnx_logits, onnx_outputs
from fmnist_seq.runtime import CPU, open_session
from fmnist_seq.uncertainty import calibration_measures

CAVEAT = ("int8 dynamic: weights int8, activations scaled per call over the whole batch, so a prediction can "
          "depend on the other images in the batch; test_accuracy is the worse of batch 1 and batch 1000")
BATCH_SIZES = (1, 1000)  # an app classifying one photo at a time, and a batch job


def quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """int8 dynamic quantization (weights int8, activations quantized on the fly); RNN/GRU nodes stay fp32."""
    source = onnx.ModelProto()
    source.CopyFrom(model)
    # The exporter's intermediate shape annotations are optional, and some onnxruntime quantizers (1.31, the
    # newest GPU build) reject them in their shape inference; without them the shapes are inferred afresh.
    del source.graph.value_info[:]
    root = logging.getLogger()
    level = root.level
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


@dataclass
class Int8Variant:
    """The int8 model, its accuracy on the validation and test splits, and whether it stays within the budget."""

    model: onnx.ModelProto
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return bool(self.figures["kept"])


def _scored(fp32: Any, int8: Any, images: LabelledImages) -> dict[str, float]:
    """The int8 model's accuracy on `images` at one image per call and at 1000, the worse of the two (the one that
    counts), and how far that falls below the fp32 model's (which does not depend on the batch); its calibration
    error and NLL (of the probabilities it ships, the fp32 file's temperature included), the worse of the two."""
    outputs = {size: onnx_outputs(int8, images.pixels, size) for size in BATCH_SIZES}
    by_batch = {size: accuracy(out.logits, images.labels) for size, out in outputs.items()}
    measures = [calibration_measures(out.probabilities, images.labels) for out in outputs.values()]
    worst = min(by_batch.values())
    return {"accuracy": worst, **{f"accuracy_batch_{size}": by_batch[size] for size in BATCH_SIZES},
            "accuracy_drop": accuracy(onnx_logits(fp32, images.pixels), images.labels) - worst,
            "ece": max(m["ece"] for m in measures), "nll": max(m["nll"] for m in measures)}


def quantize_checked(fp32: onnx.ModelProto, valid: LabelledImages, test: LabelledImages,
                     max_accuracy_drop: float) -> Int8Variant:
    """The int8 variant of `fp32`, kept if its accuracy on `valid` stays within `max_accuracy_drop` of fp32's;
    its accuracy on `test` is reported beside it, and decides nothing.

    Dynamic quantization scales the activations per call, over the whole batch, so an image's prediction
    can depend on the other images in its batch (fp32 predictions do not). The accuracy that counts is the
    worse of one image per call (an app classifying single photos) and batches of 1000.
    """
    if valid.split == test.split:
        raise ValueError(f"the int8 variant is kept or dropped on one split and reported on another, not both on "
                         f"{test.split!r}: a figure that chose the file would no longer be an unbiased report")
    int8 = quantized(fp32)
    sessions = open_session(fp32.SerializeToString(), [CPU]), open_session(int8.SerializeToString(), [CPU])
    decided, reported = _scored(*sessions, valid), _scored(*sessions, test)
    # The quantizer copies the fp32 file's metadata: its test accuracy must become the int8 figure.
    props = {prop.key: prop.value for prop in int8.metadata_props}
    props.update(test_accuracy=json.dumps(reported["accuracy"]), quantization=CAVEAT)
    onnx.helper.set_model_props(int8, props)
    figures = {"kept": decided["accuracy_drop"] <= max_accuracy_drop,
               **{f"{valid.split}_{key}": value for key, value in decided.items()},
               **{f"{test.split}_{key}": value for key, value in reported.items()},
               "file_bytes": int8.ByteSize()}
    return Int8Variant(model=int8, figures=figures)
