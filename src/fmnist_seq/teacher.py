"""The teacher's logits of the training images, computed once per teacher (stage teacher_logits) and read by every
distilling run: an lstm-only experiment no longer runs the teacher over the whole train split.

Logits, not probabilities: the temperature that softens them is the student's param (train_lstm.distill), so a
temperature sweep reuses the same file. The file names its origin (the teacher checkpoint's SHA-256) and the
images it was computed on (their count and SHA-256): a file for other images is refused, never used.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmnist_seq.atomic import write_json, write_torch
from fmnist_seq.checkpoint import checkpoint_sha256, load_checkpoint
from fmnist_seq.data import load_split
from fmnist_seq.errors import TrainingError
from fmnist_seq.models import Classifier, predict_logits

# Small batches keep the CNN's feature maps in the cache: on the CPU the pass runs about 3x faster per image at 128
# than at the validation loop's 1024 (docs/performance.md).
TEACHER_BATCH = 128
FORMAT_VERSION = 1
REPRO_HINT = "rerun `dvc repro teacher_logits`"


def images_sha256(images: torch.Tensor) -> str:
    """The SHA-256 of the images' bytes (uint8 pixels, in order): which split, and which order, the rows are of."""
    return hashlib.sha256(images.contiguous().cpu().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class TeacherLogits:
    """Row i: the teacher's logits of training image i (fp32, eval mode), and where they came from."""

    logits: torch.Tensor  # (N, classes) float32, on the CPU
    teacher_sha256: str  # of the teacher checkpoint's bytes
    images_sha256: str  # images_sha256 of the N training images
    cell: str  # the teacher's architecture, for the log line

    @property
    def count(self) -> int:
        return len(self.logits)

    def probabilities(self, temperature: float) -> torch.Tensor:
        """Softened as the training loop always softened the teacher's logits (CPU, float32)."""
        return torch.softmax(self.logits / temperature, dim=1)

    def check(self, images: torch.Tensor, source: str) -> None:
        """Refuse logits of other images than `images` (another split, seed or order): never silently used."""
        if self.count != len(images):
            raise TrainingError(f"{source} holds the teacher's logits of {self.count} images, and the training split "
                                f"has {len(images)}: the file is stale or foreign; {REPRO_HINT}")
        if self.images_sha256 != images_sha256(images):
            raise TrainingError(f"{source} was computed on other training images (their SHA-256 differs: another "
                                f"seed or valid_ratio?): the file is stale or foreign; {REPRO_HINT}")


def compute_teacher_logits(teacher: Classifier, images: torch.Tensor, teacher_sha256: str,
                           device: torch.device = torch.device("cpu")) -> TeacherLogits:
    """The teacher's logits of every image, in eval mode and fp32 (predict_logits), in TEACHER_BATCH batches."""
    logits = predict_logits(teacher.to(device), images, TEACHER_BATCH, device)
    return TeacherLogits(logits.float(), teacher_sha256, images_sha256(images), teacher.cfg.cell)


def logits_of_checkpoint(checkpoint: Path, images: torch.Tensor,
                         device: torch.device = torch.device("cpu")) -> tuple[TeacherLogits, float]:
    """The logits of the teacher saved at `checkpoint`, and the seconds the pass over the images took."""
    teacher = load_checkpoint(checkpoint).model
    start = time.perf_counter()
    logits = compute_teacher_logits(teacher, images, checkpoint_sha256(checkpoint), device)
    return logits, time.perf_counter() - start


def save_teacher_logits(path: str | Path, logits: TeacherLogits) -> None:
    write_torch(path, {"format_version": FORMAT_VERSION, "logits": logits.logits.contiguous(),
                       "teacher_sha256": logits.teacher_sha256, "images_sha256": logits.images_sha256,
                       "count": logits.count, "cell": logits.cell})


def load_teacher_logits(path: str | Path, images: torch.Tensor) -> TeacherLogits:
    """The logits saved at `path`, checked against the training images they must be of."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path} is missing: the teacher's logits of the training images; {REPRO_HINT}")
    try:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format {blob.get('format_version')}, this code reads {FORMAT_VERSION}")
        logits = TeacherLogits(blob["logits"], str(blob["teacher_sha256"]), str(blob["images_sha256"]),
                               str(blob["cell"]))
        if logits.logits.dtype != torch.float32 or logits.logits.dim() != 2 or int(blob["count"]) != logits.count:
            raise ValueError(f"a {tuple(logits.logits.shape)} {logits.logits.dtype} tensor for {blob['count']} images")
    except Exception as exc:  # truncated, foreign, an older format: say which file and how to remake it
        raise TrainingError(f"{path} is not a teacher logits file of this project ({type(exc).__name__}: {exc}); "
                            f"{REPRO_HINT}") from None
    logits.check(images, str(path))
    return logits


def write_teacher_logits(checkpoint: Path, data: Path, out: Path, timings: Path, device: torch.device) -> None:
    """Stage teacher_logits: the logits file, and its timings (the teacher's pass, part of distillation's cost)."""
    train = load_split(data, "train")
    print(f"teacher_logits: the teacher {checkpoint} over {len(train)} training images on {device}", flush=True)
    logits, seconds = logits_of_checkpoint(checkpoint, train.images, device)
    save_teacher_logits(out, logits)
    write_json(timings, {"device": str(device), "images": logits.count, "seconds": round(seconds, 2),
                         "images_per_s": round(logits.count / seconds, 1) if seconds > 0 else None})
    print(f"teacher_logits: {logits.count} images in {seconds:.1f} s ({logits.count / max(seconds, 1e-9):,.0f} img/s)"
          f" -> {out}")
