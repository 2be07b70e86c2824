"""Training throughput of both models, and its share of this machine's fp32 matmul rate.

Prints one JSON line per model:
  samples_per_s        training images per second (forward + backward + optimizer step) at the
                       model's params.yaml batch size, on the real prepared data when present
  seconds_to_90_valid  wall seconds until validation accuracy first reached 90%, read from the
                       checkpoint's per-epoch history (the last `dvc repro`); null if never reached
  achieved_gflops      samples_per_s * 3 * forward FLOPs per image (backward ~ 2x forward)
  matmul_gflops        fp32 matmul rate of this machine, measured in the same run
  share_of_matmul      achieved_gflops / matmul_gflops

Usage: python bench/train_throughput.py [--steps 100] [--models rnn gru]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.config import TrainConfig, load_block, load_seed
from fmnist_seq.data import load_split
from fmnist_seq.errors import PipelineError
from fmnist_seq.models import SequenceClassifier, forward_flops
from fmnist_seq.training import make_optimizer


def matmul_gflops(size: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        calls += 1
    return 2 * size ** 3 * calls / (time.perf_counter() - start) / 1e9


def train_samples_per_s(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = SequenceClassifier(cfg.model).train()
    optimizer = make_optimizer(cfg, model)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    generator = torch.Generator().manual_seed(seed)

    def step() -> None:
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=generator)
        loss = criterion(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: allocator and kernel selection
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def seconds_to_valid_accuracy(checkpoint: Path, target: float) -> float | None:
    try:
        history = load_checkpoint(checkpoint).history
    except PipelineError:
        return None
    reached = [h["elapsed_s"] for h in history if h["valid_accuracy"] >= target]
    return round(reached[0], 1) if reached else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per model (default 100)")
    parser.add_argument("--models", nargs="+", default=["rnn", "gru"], help="which models (default both)")
    parser.add_argument("--data", default="data/prepared", help="prepared data folder (random data if absent)")
    parser.add_argument("--checkpoints", default="models", help="folder of <name>.pt from the last dvc repro")
    args = parser.parse_args()
    seed = load_seed()
    try:
        train = load_split(args.data, "train")
        images, labels, data = train.images, train.labels, "real"
    except PipelineError:
        images, labels, data = torch.randn(4096, 28, 28), torch.randint(0, 10, (4096,)), "random"
    for name in args.models:
        cfg = load_block(TrainConfig, f"train_{name}")
        # Interleave: the matmul rate is taken right before and after this model's timing.
        before = matmul_gflops()
        rate = train_samples_per_s(cfg, images, labels, args.steps, seed)
        ceiling = max(before, matmul_gflops())
        achieved = rate * 3 * forward_flops(cfg.model) / 1e9
        print(json.dumps({
            "model": name, "batch_size": cfg.batch_size, "data": data, "threads": torch.get_num_threads(),
            "samples_per_s": round(rate, 1),
            "seconds_to_90_valid": seconds_to_valid_accuracy(Path(args.checkpoints) / f"{name}.pt", 0.90),
            "forward_mflops_per_image": round(forward_flops(cfg.model) / 1e6, 2),
            "achieved_gflops": round(achieved, 1), "matmul_gflops": round(ceiling, 1),
            "share_of_matmul": round(achieved / ceiling, 3),
        }), flush=True)


if __name__ == "__main__":
    main()
