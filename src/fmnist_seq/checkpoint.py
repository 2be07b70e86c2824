"""Checkpoints: everything needed to rebuild the selected model, loadable with weights_only=True."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmnist_seq.atomic import write_torch
from fmnist_seq.config import ModelConfig, as_dict, build
from fmnist_seq.errors import CheckpointError, ParamsError
from fmnist_seq.models import Classifier, build_model

# 2: uint8 input, the normalization statistics are buffers in the state dict.
FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    model: Classifier  # in eval mode, normalization included
    model_config: ModelConfig
    selected_epoch: int
    valid: dict[str, float]  # loss and accuracy of the selected epoch
    train_params: dict[str, Any]  # the whole train_<model> block it was trained with
    history: list[dict[str, float]]  # per epoch: losses, accuracies, mean_lr (no timings: see timings.json)

    @property
    def precision(self) -> str:
        """The training step's precision (fp32, bf16); a checkpoint from before the setting trained in fp32.
        The weights themselves are fp32 either way."""
        return str(self.train_params.get("precision", "fp32"))


def save_checkpoint(path: str | Path, model: Classifier, train_params: dict[str, Any], selected_epoch: int,
                    valid: dict[str, float], history: list[dict[str, float]]) -> None:
    blob = {
        "format_version": FORMAT_VERSION,
        "state_dict": model.state_dict(),
        "model_config": as_dict(model.cfg),
        "train_params": train_params,
        "selected_epoch": selected_epoch,
        "valid": valid,
        "history": history,
    }
    # Same training, same bytes, so the exported models' checkpoint_sha256 is stable too.
    write_torch(path, blob)


def load_checkpoint(path: str | Path, expected: ModelConfig | None = None) -> Checkpoint:
    """Load and rebuild a checkpoint; `expected` (from params.yaml) must match what it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: run the training stage first (`dvc repro`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        version = blob.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path} has checkpoint format {version}, this code reads {FORMAT_VERSION}: "
                                  "rerun its training stage (`dvc repro`)")
        stored = build(ModelConfig, blob["model_config"], f"{path}:model_config")
        fields = {"selected_epoch": int(blob["selected_epoch"]), "valid": dict(blob["valid"]),
                  "train_params": blob["train_params"], "history": list(blob["history"])}
        state_dict = blob["state_dict"]
    except CheckpointError:
        raise
    except (ParamsError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a checkpoint of this project ({exc}); rerun its training stage") from None
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}); "
                              "the file is truncated or not a checkpoint: rerun its training stage") from None
    if expected is not None and stored != expected:
        diffs = [f"{k}: checkpoint {getattr(stored, k)!r} vs params {getattr(expected, k)!r}"
                 for k in as_dict(expected) if getattr(stored, k) != getattr(expected, k)]
        raise CheckpointError(f"{path} was trained with another architecture than params.yaml says ("
                              + "; ".join(diffs) + "): rerun its training stage (`dvc repro`)")
    model = build_model(stored, mean=0.0, std=1.0)  # the real statistics come with the state dict
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit the architecture {stored}: "
                              f"{' '.join(s.strip() for s in first[:3])}") from None
    model.eval()
    return Checkpoint(model=model, model_config=stored, **fields)


def checkpoint_sha256(path: str | Path) -> str:
    """The file's SHA-256: what an exported model records as its origin."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
