"""Training throughput of one training process, and its share of this machine's fp32 matmul rate.

Times the exact optimizer step that `fit` runs (the same `Step`: loss with label smoothing, gradient
clipping, optimizer and scheduler) at the model's params.yaml batch size, with a pinned thread count, so
that "1 process x 2 threads" and "2 processes x 1 thread" can be compared on the same footing (run it
twice, with --threads 2 and, in two shells at once, --threads 1). Prints one JSON line per model:

  samples_per_s        training images per second of this process
  achieved_gflops      samples_per_s * 3 * forward FLOPs per image (backward ~ 2x forward)
  matmul_gflops        fp32 matmul rate of this machine with the same threads, measured in the same run
  share_of_matmul      achieved_gflops / matmul_gflops

Usage: python bench/train_throughput.py [--steps 100] [--models rnn gru] [--threads N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from fmnist_seq.config import TrainConfig, load_block, load_seed
from fmnist_seq.data import load_normalization, load_split
from fmnist_seq.distributed import Worker
from fmnist_seq.errors import PipelineError
from fmnist_seq.inference_bench import matmul_gflops
from fmnist_seq.machine import usable_cpus
from fmnist_seq.models import SequenceClassifier, forward_flops
from fmnist_seq.training import make_step


def train_samples_per_s(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float,
                        steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = SequenceClassifier(cfg.model, mean, std).train()
    step = make_step(cfg, model, Worker(), steps_per_epoch=steps + 3)
    generator = torch.Generator().manual_seed(seed)

    def one_step() -> None:
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=generator)
        step(images[idx], labels[idx])

    for _ in range(3):  # warm-up: allocator and kernel selection
        one_step()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per model (default 100)")
    parser.add_argument("--models", nargs="+", default=["rnn", "gru"], help="which models (default both)")
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="intra-op threads (default: all CPUs)")
    parser.add_argument("--batch-size", type=int, help="override the params.yaml batch size")
    parser.add_argument("--data", default="data/prepared", help="prepared data folder (random data if absent)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed = load_seed()
    try:
        train = load_split(args.data, "train")
        norm = load_normalization(args.data)
        images, labels, data, mean, std = train.images, train.labels, "real", norm.mean, norm.std
    except PipelineError:
        images = torch.randint(0, 256, (4096, 28, 28), dtype=torch.uint8)
        labels, data, mean, std = torch.randint(0, 10, (4096,)), "random", 0.286, 0.353
    for name in args.models:
        cfg = load_block(TrainConfig, f"train_{name}")
        if args.batch_size:
            cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
        # Interleave: the matmul rate is taken right before and after this model's timing.
        before = matmul_gflops(seconds=2.0, threads=args.threads)["matmul_gflops_torch"]
        rate = train_samples_per_s(cfg, images, labels, mean, std, args.steps, seed)
        ceiling = max(before, matmul_gflops(seconds=2.0, threads=args.threads)["matmul_gflops_torch"])
        achieved = rate * 3 * forward_flops(cfg.model) / 1e9
        print(json.dumps({
            "model": name, "batch_size": cfg.batch_size, "data": data, "threads": torch.get_num_threads(),
            "samples_per_s": round(rate, 1), "forward_mflops_per_image": round(forward_flops(cfg.model) / 1e6, 2),
            "achieved_gflops": round(achieved, 1), "matmul_gflops": round(ceiling, 1),
            "share_of_matmul": round(achieved / ceiling, 3),
        }), flush=True)


if __name__ == "__main__":
    main()
