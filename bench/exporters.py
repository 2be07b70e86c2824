"""Compare the two ONNX exporters on the pipeline's checkpoints: parity with PyTorch and CPU speed.

Prints one JSON line per model and exporter: max |logit diff|, max |probability diff| and mismatched
predictions on the test set, onnxruntime images/s at batch 256 and PyTorch eager's, measured side by side in
the same run with both engines on the same number of threads. This is how export.exporters in params.yaml was
chosen; the opset is params.yaml's export.opset.

Usage: python bench/exporters.py [--seconds 3] [--threads N]   (after `dvc repro train_rnn train_gru`)
"""

from __future__ import annotations

import argparse
import json

import torch

from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.config import MODEL_NAMES, load_export
from fmnist_seq.data import load_split
from fmnist_seq.inference_bench import benchmark, session_engine, torch_engine
from fmnist_seq.machine import usable_cpus
from fmnist_seq.onnx_export import export_model
from fmnist_seq.parity import check_parity, onnx_outputs, torch_outputs
from fmnist_seq.runtime import CPU, open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per model and exporter")
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="threads of both engines")
    args = parser.parse_args()
    opset = load_export().opset
    torch.set_num_threads(args.threads)
    test = load_split("data/prepared", "test")
    pixels, labels = test.images.numpy(), test.labels.numpy()
    for name in MODEL_NAMES:
        model = load_checkpoint(f"models/{name}.pt").model
        reference = torch_outputs(model, pixels)
        for exporter in ("dynamo", "legacy"):
            exported = export_model(model, exporter, opset)
            session = open_session(exported.SerializeToString(), [CPU], threads=args.threads)
            parity = check_parity(reference, onnx_outputs(session, pixels), labels)
            speed = benchmark({"torch": torch_engine(model), "onnxruntime": session_engine(session)}, pixels, 256,
                              args.seconds)
            ops = sorted({node.op_type for node in exported.graph.node} & {"RNN", "GRU", "MatMul", "Gemm"})
            print(json.dumps({"model": name, "exporter": exporter, "opset": opset, "threads": args.threads,
                              "recurrent_ops": ops, "max_logit_diff": parity.max_logit_diff,
                              "max_probability_diff": parity.max_probability_diff,
                              "mismatched_predictions": parity.mismatched_predictions,
                              "torch_images_per_s": speed["torch_images_per_s"],
                              "onnxruntime_images_per_s": speed["onnxruntime_images_per_s"],
                              "speedup": speed["onnxruntime_speedup"]}), flush=True)


if __name__ == "__main__":
    main()
