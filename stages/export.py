"""export: write ONNX models (uint8 pixels in, logits and probabilities out), verified against PyTorch."""

import argparse
from pathlib import Path

from fmnist_seq.atomic import write_json
from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.config import TrainConfig, load_block, load_export
from fmnist_seq.data import load_split
from fmnist_seq.onnx_export import export_checkpoint, providers_that_ran, raw_pixels
from fmnist_seq.runtime import select_providers
from fmnist_seq.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--data", required=True, help="prepared data folder (test.pt)")
parser.add_argument("--models", required=True, help="folder holding <name>.pt checkpoints")
parser.add_argument("--out", required=True, help="folder for <name>.onnx (and <name>.int8.onnx)")
parser.add_argument("--metrics", required=True, help="export metrics JSON: parity, size, speed")
args = parser.parse_args()


def main() -> None:
    cfg = load_export()
    providers = select_providers(cfg.provider)
    test = load_split(args.data, "test")
    metrics: dict = {}
    for name in cfg.models:
        ckpt = load_checkpoint(Path(args.models) / f"{name}.pt", load_block(TrainConfig, f"train_{name}").model)
        pixels = raw_pixels(test.images, ckpt.normalization.mean, ckpt.normalization.std)
        metrics[name] = export_checkpoint(name, ckpt, cfg, pixels, test.labels.numpy(), args.out, providers)
    # The providers that ran, not the ones asked for: with `auto`, CUDA may have failed to start.
    write_json(args.metrics, {"providers": providers_that_ran(metrics), **metrics})


if __name__ == "__main__":
    run_stage("export", main, outputs=[args.out, args.metrics])
