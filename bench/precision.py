"""fp32 against bf16 training, side by side: images/s and seconds per epoch per model, threads and workers.

For each model and each placement (1 worker x 1 thread, 1 worker x 2 threads, 2 workers x 1 thread), it runs
the training stage itself (`stages/train.py`, its workers launched as `dvc repro` launches them) for one epoch
on the first --images training images, once in fp32 and right after in bf16, and reads the epoch's images/s
from the stage's timings.json. The two precisions of a placement run back to back, so their ratio compares
like with like on a noisy machine; --repeats alternates the order and keeps each precision's best epoch.
"One thread" pins the stage to one CPU (taskset semantics, through the affinity mask the stage reads).
Prints one JSON line per model and placement, and appends it to --out (results/bench/precision.jsonl, which
docs/generate.py turns into docs/performance.md's table). Run it alone on the machine.

  python bench/precision.py [--models rnn gru lstm teacher] [--images 16384] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from fmnist_seq.config import read_params
from fmnist_seq.data import Normalization, Split, load_normalization, load_split, save_prepared
from fmnist_seq.inference_bench import matmul_gflops
from fmnist_seq.precision import native_bf16

ROOT = Path(__file__).resolve().parents[1]
PLACEMENTS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # name: (workers, threads per worker)
TRAIN_IMAGES = 54_000  # the pipeline's training split: seconds per epoch are scaled to it


def subset(data: Path, images: int, out: Path) -> None:
    """A prepared folder holding the first `images` training images (the valid split kept small too)."""
    def first(split: Split, n: int) -> Split:
        return Split(split.images[:n], split.labels[:n], split.source_index[:n])

    norm: Normalization = load_normalization(data)
    save_prepared({"train": first(load_split(data, "train"), images), "valid": first(load_split(data, "valid"), 1000),
                   "test": first(load_split(data, "test"), 1000)}, norm, out)


def one_epoch(model: str, precision: str, workers: int, threads: int, data: Path) -> float:
    """The stage's training images/s for one epoch at this precision and placement."""
    params = read_params(ROOT / "params.yaml")
    block = params[f"train_{model}"]
    # One epoch of the step alone: the distilling lstm's teacher term is a few element-wise ops per batch
    block.update(precision=precision, workers=workers, epochs=1, patience=0, distill={**block["distill"], "alpha": 0.0})
    cpus = sorted(os.sched_getaffinity(0))[:workers * threads]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["taskset", "-c", ",".join(map(str, cpus)), sys.executable, str(ROOT / "stages" / "train.py"),
                        "--model", model, "--data", str(data), "--checkpoint", str(work / "model.pt"),
                        "--live-dir", str(work / "live"), "--timings", str(work / "timings.json")],
                       cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        timings = json.loads((work / "timings.json").read_text())
    if (timings["workers"], timings["threads_per_worker"]) != (workers, threads):
        raise SystemExit(f"{model}: asked for {workers} worker(s) x {threads} thread(s), the stage ran "
                         f"{timings['workers']} x {timings['threads_per_worker']}")
    return float(timings["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rnn", "gru", "lstm", "teacher"])
    parser.add_argument("--placements", nargs="+", choices=PLACEMENTS, default=list(PLACEMENTS))
    parser.add_argument("--images", type=int, default=16_384, help="training images per epoch (default 16384)")
    parser.add_argument("--repeats", type=int, default=1, help="epochs per precision and placement, best kept")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench/precision.py compares 1 and 2 CPUs: run it where 2 CPUs are usable")
    rate = matmul_gflops(seconds=2.0, threads=2)["matmul_gflops_torch"]
    native = native_bf16(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "prepared"
        subset(args.data, args.images, data)
        for model in args.models:
            for name in args.placements:
                workers, threads = PLACEMENTS[name]
                best = {"fp32": 0.0, "bf16": 0.0}
                for repeat in range(args.repeats):  # alternate which precision goes first
                    for precision in (("fp32", "bf16") if repeat % 2 == 0 else ("bf16", "fp32")):
                        best[precision] = max(best[precision], one_epoch(model, precision, workers, threads, data))
                line = {"model": model, "workers": workers, "threads_per_worker": threads, "images": args.images,
                        "repeats": args.repeats, "native_bf16": native, "matmul_gflops": round(rate, 1),
                        **{f"{p}_images_per_s": round(v, 1) for p, v in best.items()},
                        **{f"{p}_s_per_epoch": round(TRAIN_IMAGES / v, 1) for p, v in best.items()},
                        "bf16_speedup": round(best["bf16"] / best["fp32"], 3)}
                print(json.dumps(line), flush=True)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
