"""A training run's record in DVC's formats: per-epoch metrics and the learning curve through dvclive, and the
run's timings in their own file (measurements of the machine, kept out of the declared metrics)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dvclive import Live

from fmnist_seq.atomic import write_json
from fmnist_seq.distributed import Worker
from fmnist_seq.plots import learning_curve
from fmnist_seq.training import EpochRecord, TrainResult

# dvclive metric name -> EpochRecord field; dvc.yaml's Loss and Accuracy plots read these series.
CURVES = {"train/loss": "train_loss", "train/accuracy": "train_accuracy",
          "valid/loss": "valid_loss", "valid/accuracy": "valid_accuracy", "mean_lr": "mean_lr"}


def open_live(live_dir: str | Path) -> Live:
    # dvcyaml=False: dvc.yaml declares the plots itself (one owner for each declaration); Live clears
    # its folder on start, so each model has its own.
    return Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)


def log_epoch(live: Live, record: EpochRecord) -> None:
    live.step = record.epoch
    for metric, attribute in CURVES.items():
        live.log_metric(metric, getattr(record, attribute))


def log_result(live: Live, result: TrainResult, title: str) -> None:
    """The selected epoch, and the learning curve with it marked."""
    live.log_metric("selected/epoch", result.selected_epoch, plot=False)
    live.log_metric("selected/valid_loss", result.selected.valid_loss, plot=False)
    live.log_metric("selected/valid_accuracy", result.selected.valid_accuracy, plot=False)
    history = [dataclasses.asdict(r) for r in result.history]
    live.log_image("learning_curve.png", learning_curve(history, result.selected_epoch, title))


def write_timings(path: str | Path, result: TrainResult, worker: Worker, threads: int, precision: str,
                  native_bf16: bool) -> None:
    """`precision` and `native_bf16` (precision.py) say what the images/s are of: a bf16 run on a device without
    native bf16 is emulated, and its rate is no measure of bf16 on a device with it."""
    timings: dict[str, Any] = {
        "device": str(worker.device), "workers": worker.world_size, "threads_per_worker": threads,
        "precision": precision, "native_bf16": native_bf16,
        "train_seconds": round(result.history[-1].elapsed_s, 1),
        "images_per_s": round(sum(r.images_per_s for r in result.history) / len(result.history), 1),
        "epochs": [{"epoch": r.epoch, "elapsed_s": round(r.elapsed_s, 1), "images_per_s": round(r.images_per_s, 1)}
                   for r in result.history],
    }
    if result.snapshot_seconds:  # what saving the state after each epoch costs, against an epoch's time
        epoch_s = result.history[-1].elapsed_s / len(result.history)
        mean_s = sum(result.snapshot_seconds) / len(result.snapshot_seconds)
        timings["snapshot"] = {"writes": len(result.snapshot_seconds), "mean_s": round(mean_s, 4),
                               "max_s": round(max(result.snapshot_seconds), 4),
                               "share_of_epoch": round(mean_s / epoch_s, 5)}
    write_json(path, timings)
