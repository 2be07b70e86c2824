"""Train both models with their params.yaml settings on one device and report the wall time beside the CPU run.

This is the pipeline's training and evaluation, run in memory without DVC, in one process on one device,
so that it also runs on a machine with only PyTorch, torchvision, ruamel.yaml, tqdm and psutil (a GPU host that
cannot reach the package index, say). It reads the raw
IDX files (`data/raw`, or Debian's `/usr/share/datasets/fashion-mnist` .gz files), makes the same seeded
split and normalization as the prepare stage, trains each model with `fit`, and prints a JSON line and a
Markdown table row per model:

  device, torch        where it ran, and the PyTorch version
  train_seconds        wall time of all epochs, validation included (set-up and CUDA start-up excluded)
  images_per_s         mean training images per second over the epochs
  selected_epoch       the epoch picked by validation loss
  test_accuracy        on the 10,000 test images
  cpu_reference        train_seconds and test accuracy of the committed `dvc repro` run on the CPU
                       (results/train/<model>/timings.json, results/evaluate/metrics.json)
  repeat_max_abs_diff  with --repeat: the largest difference in train and validation loss between two
                       identical one-epoch runs (0 means bit-identical; cuDNN's RNN kernels need not be)

Usage: PYTHONPATH=src python bench/device_timings.py [--device cuda] [--models rnn gru] [--epochs N]
                                                     [--raw data/raw] [--repeat] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
import tempfile
from pathlib import Path

import torch

from fmnist_seq.config import PrepareConfig, TrainConfig, load_block, load_seed
from fmnist_seq.data import RAW_FILES, Normalization, prepare_splits, read_raw
from fmnist_seq.distributed import Worker, resolve_device
from fmnist_seq.models import predict_logits
from fmnist_seq.training import TrainingJob, fit

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def raw_folder(raw: Path, scratch: Path) -> Path:
    """`raw` if it holds the four IDX files, else Debian's .gz files decompressed into `scratch`."""
    if all((raw / name).is_file() for name in RAW_FILES.values()):
        return raw
    if all((DEBIAN_DIR / f"{name}.gz").is_file() for name in RAW_FILES.values()):
        for name in RAW_FILES.values():
            (scratch / name).write_bytes(gzip.decompress((DEBIAN_DIR / f"{name}.gz").read_bytes()))
        return scratch
    sys.exit(f"no Fashion-MNIST IDX files in {raw} or {DEBIAN_DIR}: run `dvc repro download` or pass --raw")


def cpu_reference(name: str) -> dict:
    """The committed CPU run's figures (results/ is committed to git), for comparison."""
    out: dict = {}
    timings = Path("results/train") / name / "timings.json"
    if timings.is_file():
        out["train_seconds"] = json.loads(timings.read_text()).get("train_seconds")
        out["workers"] = json.loads(timings.read_text()).get("workers")
    evaluate = Path("results/evaluate/metrics.json")
    if evaluate.is_file():
        out["test_accuracy"] = json.loads(evaluate.read_text()).get(name, {}).get("test_accuracy")
    return out


def first_epoch_losses(cfg: TrainConfig, splits: dict, norm: Normalization, seed: int,
                       device: torch.device) -> tuple[float, float]:
    record = fit(TrainingJob(dataclasses.replace(cfg, epochs=1), splits["train"], splits["valid"], norm, seed,
                             Worker(device=device)), log=lambda _: None).history[0]
    return record.train_loss, record.valid_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--models", nargs="+", choices=("rnn", "gru"), default=["rnn", "gru"])
    parser.add_argument("--epochs", type=int, help="override params.yaml's epochs (a shorter smoke run)")
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="folder with the four IDX files")
    parser.add_argument("--repeat", action="store_true", help="also train the first epoch twice and compare")
    parser.add_argument("--json-out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    device = resolve_device(args.device)
    seed = load_seed()
    with tempfile.TemporaryDirectory() as scratch:
        raw = read_raw(raw_folder(args.raw, Path(scratch)))
    splits, norm = prepare_splits(raw, load_block(PrepareConfig, "prepare").valid_ratio, seed)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({gpu}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)

    results = []
    rows = ["| model | device | epochs | train s | img/s | test acc | CPU run: train s | CPU run: test acc |",
            "|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        cfg = dataclasses.replace(load_block(TrainConfig, f"train_{name}"), device=device.type)
        if args.epochs:
            cfg = dataclasses.replace(cfg, epochs=args.epochs)
        result = fit(TrainingJob(cfg, splits["train"], splits["valid"], norm, seed, Worker(device=device)),
                     log=lambda line: print(f"{name}: {line}", flush=True))
        seconds = result.history[-1].elapsed_s  # the epochs alone, as the stages' train_seconds counts them
        predicted = predict_logits(result.model, splits["test"].images, 1024).argmax(1)
        test_acc = (predicted == splits["test"].labels).float().mean().item()
        row = {"model": name, "device": gpu, "torch": torch.__version__, "epochs": len(result.history),
               "train_seconds": round(seconds, 1),
               "images_per_s": round(sum(r.images_per_s for r in result.history) / len(result.history), 1),
               "selected_epoch": result.selected_epoch, "test_accuracy": round(test_acc, 4),
               "cpu_reference": cpu_reference(name)}
        if args.repeat:
            a, b = (first_epoch_losses(cfg, splits, norm, seed, device), first_epoch_losses(cfg, splits, norm, seed, device))
            row["repeat_max_abs_diff"] = max(abs(x - y) for x, y in zip(a, b))
        print(json.dumps(row), flush=True)
        results.append(row)
        ref = row["cpu_reference"]
        rows.append(f"| {name} | {gpu} | {row['epochs']} | {row['train_seconds']} | {row['images_per_s']:,.0f} | "
                    f"{row['test_accuracy']:.4f} | {ref.get('train_seconds', '-')} | {ref.get('test_accuracy', '-')} |")
    print("\n".join(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
