"""Compare the two ONNX exporters on the pipeline's checkpoints: parity with PyTorch and CPU speed.

Prints one JSON line per model and exporter: max |logit diff| and mismatched predictions on the test
set, onnxruntime images/s at batch 256 and PyTorch eager's, measured side by side in the same run.
This is how export.exporters in params.yaml was chosen.

Usage: python bench/exporters.py [--seconds 3]   (after `dvc repro train_rnn train_gru`)
"""

from __future__ import annotations

import argparse
import json

import onnx

from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.config import MODEL_NAMES
from fmnist_seq.data import load_split
from fmnist_seq.onnx_export import (PixelClassifier, benchmark, check_parity, export_bytes, onnx_outputs, raw_pixels,
                                    session_from_proto, torch_outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per engine (default 3)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    args = parser.parse_args()
    test = load_split("data/prepared", "test")
    for name in MODEL_NAMES:
        ckpt = load_checkpoint(f"models/{name}.pt")
        wrapper = PixelClassifier(ckpt.model, ckpt.normalization.mean, ckpt.normalization.std)
        pixels = raw_pixels(test.images, ckpt.normalization.mean, ckpt.normalization.std)
        reference = torch_outputs(wrapper, pixels)
        for exporter in ("dynamo", "legacy"):
            model = onnx.load_from_string(export_bytes(wrapper, exporter, args.opset))
            session = session_from_proto(model, ["CPUExecutionProvider"])
            parity = check_parity(reference, onnx_outputs(session, pixels), test.labels.numpy())
            speed = benchmark(wrapper, {"onnxruntime": session}, pixels, 256, args.seconds)
            ops = sorted({node.op_type for node in model.graph.node} & {"RNN", "GRU", "MatMul", "Gemm"})
            print(json.dumps({"model": name, "exporter": exporter, "recurrent_ops": ops,
                              "max_logit_diff": parity.max_logit_diff,
                              "mismatched_predictions": parity.mismatched_predictions,
                              "torch_images_per_s": speed["torch_images_per_s"],
                              "onnxruntime_images_per_s": speed["onnxruntime_images_per_s"],
                              "speedup": speed["onnxruntime_speedup"]}), flush=True)


if __name__ == "__main__":
    main()
