"""Time to accuracy: the pipeline's training at its params.yaml defaults against the report's own loop.

Everything runs in one invocation on this machine, so that only ratios are compared (machines of the same
kind differ by up to 2x in absolute speed):

  matmul       this machine's fp32 matmul rate (1024x1024, all usable CPUs), the ceiling for both
  report_loop  the report's loop: torchvision's FashionMNIST dataset read from the raw IDX files, a DataLoader
               (batch 64, shuffled) with per-item ToTensor + Normalize, Adam at lr 0.001, constant lr, no
               clipping or smoothing, the same architecture as params.yaml and the pipeline's train/valid
               split; validated after every epoch until it first reaches the target
  pipeline     `stages/train.py` with params.yaml as it is (data-parallel workers and all), started as
               `dvc repro` starts it; its clock runs from process start, so start-up and worker launch count

Targets: 90% validation accuracy for the GRU, 88% for the RNN. Prints one JSON line per measurement and one
per model with `speedup` = report_loop seconds / pipeline seconds. Run it alone on the machine:

  python bench/time_to_accuracy.py [--models gru rnn] [--max-epochs 15]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.config import TrainConfig, load_block
from fmnist_seq.data import RAW_FILES, load_normalization, load_split
from fmnist_seq.inference_bench import matmul_gflops
from fmnist_seq.machine import usable_cpus
from fmnist_seq.models import SequenceClassifier, forward_flops

TARGETS = {"gru": 0.90, "rnn": 0.88}
ROOT = Path(__file__).resolve().parents[1]


def fashion_mnist_root(raw: Path, scratch: Path) -> Path:
    """The layout torchvision's FashionMNIST reads (<root>/FashionMNIST/raw/<IDX files>), linked to `raw`."""
    folder = scratch / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for name in RAW_FILES.values():
        (folder / name).symlink_to((raw / name).resolve())
    return scratch


def report_loop(model_name: str, data: Path, raw: Path, target: float, max_epochs: int, seed: int) -> dict:
    """The report's training loop, validated each epoch; seconds from dataset creation to the target."""
    cfg = load_block(TrainConfig, f"train_{model_name}")
    norm = load_normalization(data)
    valid_index = load_split(data, "valid").source_index.tolist()
    train_index = load_split(data, "train").source_index.tolist()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((norm.mean,), (norm.std,))])
        full = datasets.FashionMNIST(fashion_mnist_root(raw, Path(scratch)), train=True, transform=transform,
                                     download=False)
        train = DataLoader(Subset(full, train_index), batch_size=64, shuffle=True)
        valid = DataLoader(Subset(full, valid_index), batch_size=1000)
        # The report's model takes normalized images: the same architecture, fed after the transform.
        model = SequenceClassifier(cfg.model, norm.mean, norm.std)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
        criterion = nn.CrossEntropyLoss()
        epochs, reached, train_seconds = [], None, 0.0
        for epoch in range(1, max_epochs + 1):
            model.train()
            epoch_start = time.perf_counter()
            for images, labels in train:
                loss = criterion(model.classify(images.squeeze(1)), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            train_seconds += time.perf_counter() - epoch_start
            model.eval()
            with torch.no_grad():
                correct = sum((model.classify(x.squeeze(1)).argmax(1) == y).sum().item() for x, y in valid)
            accuracy = correct / len(valid_index)
            elapsed = time.perf_counter() - start
            epochs.append({"epoch": epoch, "valid_accuracy": round(accuracy, 4), "elapsed_s": round(elapsed, 1)})
            if accuracy >= target:
                reached = epochs[-1]
                break
    images_per_s = len(train_index) * len(epochs) / train_seconds
    return {"run": "report_loop", "seconds_to_target": reached and reached["elapsed_s"],
            "epoch_reached": reached and reached["epoch"], "images_per_s": round(images_per_s, 1),
            "threads": torch.get_num_threads(), "epochs": epochs}


def pipeline(model_name: str, data: Path, target: float) -> dict:
    """The training stage as `dvc repro` runs it, into a scratch folder; seconds from process start."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        command = [sys.executable, str(ROOT / "stages" / "train.py"), "--model", model_name, "--data", str(data),
                   "--checkpoint", str(out / "model.pt"), "--live-dir", str(out / "live"),
                   "--timings", str(out / "timings.json")]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        timings = json.loads((out / "timings.json").read_text())
        history = load_checkpoint(out / "model.pt").history
    # Start-up, data loading, worker launch and the final writes: the wall time the epochs do not account for.
    overhead = wall - timings["epochs"][-1]["elapsed_s"]
    epochs = [{"epoch": h["epoch"], "valid_accuracy": round(h["valid_accuracy"], 4),
               "elapsed_s": round(overhead + t["elapsed_s"], 1)} for h, t in zip(history, timings["epochs"])]
    reached = next((e for e in epochs if e["valid_accuracy"] >= target), None)
    return {"run": "pipeline", "seconds_to_target": reached and reached["elapsed_s"],
            "epoch_reached": reached and reached["epoch"], "images_per_s": timings["images_per_s"],
            "workers": timings["workers"], "threads_per_worker": timings["threads_per_worker"],
            "total_seconds": round(wall, 1), "overhead_seconds": round(overhead, 1), "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(TARGETS), default=["gru", "rnn"])
    parser.add_argument("--max-epochs", type=int, default=15, help="the report loop gives up after this many")
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = parser.parse_args()
    data, raw = args.data.resolve(), args.raw.resolve()
    ceiling = matmul_gflops(seconds=3.0, threads=torch.get_num_threads())["matmul_gflops_torch"]
    print(json.dumps({"run": "matmul", "gflops": round(ceiling, 1), "threads": torch.get_num_threads(),
                      "usable_cpus": usable_cpus()}), flush=True)
    for name in args.models:
        target = TARGETS[name]
        flops = 3 * forward_flops(load_block(TrainConfig, f"train_{name}").model)  # backward ~ 2x forward
        results = {}
        for run in (lambda: report_loop(name, data, raw, target, args.max_epochs, seed=0),
                    lambda: pipeline(name, data, target)):
            result = run()
            result.update(model=name, target=target,
                          share_of_matmul=round(result["images_per_s"] * flops / 1e9 / ceiling, 3))
            results[result["run"]] = result
            print(json.dumps(result), flush=True)
        base, ours = results["report_loop"]["seconds_to_target"], results["pipeline"]["seconds_to_target"]
        print(json.dumps({"model": name, "target": target, "report_loop_seconds": base, "pipeline_seconds": ours,
                          "speedup": round(base / ours, 2) if base and ours else None}), flush=True)


if __name__ == "__main__":
    main()
