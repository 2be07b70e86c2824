"""export: write ONNX models (uint8 pixels in, logits and calibrated probabilities out), verified against PyTorch,
an int8 variant kept on its validation accuracy, a few real test images for the browser page beside them, and
time the models beside PyTorch."""

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)

from fmnist_seq.atomic import write_bytes, write_json
from fmnist_seq.calibration import load_temperatures
from fmnist_seq.config import TrainConfig, load_block, load_export
from fmnist_seq.inference_bench import matmul_gflops, time_model
from fmnist_seq.machine import usable_cpus
from fmnist_seq.onnx_export import ModelToExport, export_checkpoint
from fmnist_seq.parity import LabelledImages
from fmnist_seq.quantization import quantize_checked
from fmnist_seq.runtime import CPU, CUDA, select_providers
from fmnist_seq.samples import build_samples
from fmnist_seq.stage import run_stage


def export(args: argparse.Namespace) -> None:
    cfg = load_export()
    providers = select_providers(cfg.provider)
    # The int8 variant is kept or dropped on the validation split; the test split is only reported.
    valid, test = LabelledImages.load(args.data, "valid"), LabelledImages.load(args.data, "test")
    temperatures = load_temperatures(args.temperatures, cfg.models)
    threads = usable_cpus()
    metrics: dict = {}
    timings: dict = {"threads": threads, "providers": [CPU]}  # the providers that ran, not the ones asked for
    for name in cfg.models:
        model = ModelToExport.load(name, Path(args.checkpoints) / f"{name}.pt",
                                   load_block(TrainConfig, f"train_{name}").model, temperatures[name])
        exported = export_checkpoint(model, test, cfg, args.out, providers)
        metrics[name] = exported.figures
        timed = {"onnxruntime_cpu": (exported.path, [CPU])}
        if exported.providers[0] == CUDA:
            timed["onnxruntime_cuda"] = (exported.path, exported.providers)
            timings["providers"] = exported.providers
        if name in cfg.quantize:
            int8 = quantize_checked(exported.proto, valid, test, cfg.quantize_max_accuracy_drop)
            metrics[name]["int8"] = int8.figures
            if int8.kept:
                write_bytes(Path(args.out) / f"{name}.int8.onnx", int8.model.SerializeToString())
                timed["onnxruntime_cpu_int8"] = (Path(args.out) / f"{name}.int8.onnx", [CPU])
            scores = int8.figures
            print(f"{name}: int8 variant {'kept' if int8.kept else 'dropped'} on validation (accuracy "
                  f"{scores['valid_accuracy']:.4f}, drop {100 * scores['valid_accuracy_drop']:.2f} pts, allowed "
                  f"{100 * cfg.quantize_max_accuracy_drop:.2f}); test accuracy {scores['test_accuracy']:.4f}, "
                  f"drop {100 * scores['test_accuracy_drop']:.2f} pts")
        timings[name] = {"batch_size": cfg.bench_batch_size, **time_model(
            model.checkpoint.model, timed, test.pixels, cfg.bench_batch_size, cfg.bench_seconds, threads)}
        print(f"{name}: onnxruntime {timings[name]['onnxruntime_cpu_speedup']:.2f}x PyTorch at batch "
              f"{cfg.bench_batch_size} on {threads} thread(s)")
    timings.update(matmul_gflops(cfg.bench_seconds / 4, threads))
    write_json(Path(args.out) / "samples.json", build_samples(test.pixels, test.labels))  # the page's test images
    write_json(args.metrics, metrics)
    write_json(args.timings, timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="prepared data folder (valid.pt, test.pt)")
    parser.add_argument("--checkpoints", required=True, help="folder holding <name>.pt for export.models")
    parser.add_argument("--temperatures", required=True, help="the calibrate stage's metrics: each model's temperature")
    parser.add_argument("--out", required=True, help="folder for <name>.onnx (and <name>.int8.onnx)")
    parser.add_argument("--metrics", required=True, help="export metrics JSON: parity, accuracy, file sizes")
    parser.add_argument("--timings", required=True, help="JSON with images/s, latency and the matmul rate")
    args = parser.parse_args()
    run_stage("export", lambda: export(args), outputs=[args.out, args.metrics, args.timings])


if __name__ == "__main__":
    main()
