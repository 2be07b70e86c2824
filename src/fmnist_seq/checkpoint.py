"""Checkpoints: everything needed to rebuild the selected model, loadable with weights_only=True."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmnist_seq.atomic import atomic_path
from fmnist_seq.config import ModelConfig, TrainConfig, as_dict, build
from fmnist_seq.data import Normalization
from fmnist_seq.errors import CheckpointError, ParamsError
from fmnist_seq.models import SequenceClassifier
from fmnist_seq.training import TrainResult

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    model: SequenceClassifier
    model_config: ModelConfig
    normalization: Normalization
    selected_epoch: int
    valid: dict[str, float]  # loss and accuracy of the selected epoch
    train_params: dict[str, Any]
    history: list[dict[str, float]]


def save_checkpoint(path: str | Path, result: TrainResult, cfg: TrainConfig, norm: Normalization) -> None:
    blob = {
        "format_version": FORMAT_VERSION,
        "state_dict": result.model.state_dict(),
        "model_config": as_dict(cfg.model),
        "train_params": as_dict(cfg),
        "normalization": {"mean": norm.mean, "std": norm.std},
        "selected_epoch": result.selected_epoch,
        "valid": {"loss": result.selected.valid_loss, "accuracy": result.selected.valid_accuracy},
        "history": [dataclasses.asdict(r) for r in result.history],
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path: str | Path, expected: ModelConfig | None = None) -> Checkpoint:
    """Load and rebuild a checkpoint; `expected` (from params.yaml) must match what it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: run the training stage first (`dvc repro`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        stored = build(ModelConfig, blob["model_config"], f"{path}:model_config")
        norm = Normalization(float(blob["normalization"]["mean"]), float(blob["normalization"]["std"]))
        fields = {"selected_epoch": int(blob["selected_epoch"]), "valid": dict(blob["valid"]),
                  "train_params": blob["train_params"], "history": list(blob["history"])}
        state_dict = blob["state_dict"]
    except (ParamsError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a checkpoint of this project ({exc}); rerun its training stage") from None
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}); "
                              "the file is truncated or not a checkpoint: rerun its training stage") from None
    if expected is not None and stored != expected:
        diffs = [f"{k}: checkpoint {getattr(stored, k)!r} vs params {getattr(expected, k)!r}"
                 for k in as_dict(expected) if getattr(stored, k) != getattr(expected, k)]
        raise CheckpointError(f"{path} was trained with another architecture than params.yaml says ("
                              + "; ".join(diffs) + "): rerun its training stage (`dvc repro`)")
    model = SequenceClassifier(stored)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit the architecture {stored}: "
                              f"{' '.join(s.strip() for s in first[:3])}") from None
    model.eval()
    return Checkpoint(model=model, model_config=stored, normalization=norm, **fields)
