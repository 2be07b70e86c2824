"""Training loop with early stopping on validation loss; the tensors stay in memory, no DataLoader."""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from fmnist_seq.config import TrainConfig
from fmnist_seq.data import Split
from fmnist_seq.errors import TrainingError
from fmnist_seq.models import SequenceClassifier

# cuBLAS is deterministic only with a fixed workspace, and reads this when a process makes its first cuBLAS
# handle, so it is set on import, ahead of training; a value the user set wins. No effect on the CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    valid_loss: float
    valid_accuracy: float
    lr: float
    elapsed_s: float  # wall time since training started, at the end of this epoch
    samples_per_s: float


@dataclass
class EarlyStopping:
    """Remember the epoch with the lowest validation loss; stop after `patience` epochs without one.

    patience 0 never stops early (the best epoch is still selected).
    """

    patience: int
    best_loss: float = math.inf
    best_epoch: int = 0
    stale_epochs: int = 0

    def update(self, epoch: int, valid_loss: float) -> bool:
        """Record one epoch; True when it is the new best."""
        if valid_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.stale_epochs = valid_loss, epoch, 0
            return True
        self.stale_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale_epochs >= self.patience


@dataclass
class TrainResult:
    model: nn.Module  # holds the selected (best validation loss) weights
    history: list[EpochRecord]
    selected_epoch: int
    stopped_early: bool
    selected: EpochRecord = field(init=False)

    def __post_init__(self) -> None:
        self.selected = self.history[self.selected_epoch - 1]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device: cuda was asked for but no CUDA GPU is visible to PyTorch; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        # cuDNN's RNN kernels have no deterministic variant for every case: warn instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch; `lr` is the peak for onecycle and the start for cosine."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits for every image, in order, computed in eval mode."""
    was_training = model.training
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = nn.functional.cross_entropy(logits, labels).item()  # mean over images
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def _progress(total: int, desc: str) -> tqdm:
    # A live bar on a terminal; under `dvc repro` piped to a log, one summary line per epoch instead.
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def fit(cfg: TrainConfig, train: Split, valid: Split, seed: int,
        on_epoch: Callable[[EpochRecord], None] | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train a model from `cfg.model`, select the epoch with the best validation loss, return it."""
    device = resolve_device(cfg.device)
    seed_everything(seed, device)
    model = SequenceClassifier(cfg.model).to(device)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    shuffler = torch.Generator().manual_seed(seed)
    images, labels = train.images.to(device), train.labels.to(device)

    stopper = EarlyStopping(cfg.patience)
    best_state: dict[str, torch.Tensor] = {}
    history: list[EpochRecord] = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        order = torch.randperm(len(train), generator=shuffler).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        with _progress(len(train), f"epoch {epoch}/{cfg.epochs}") as bar:
            for step, offset in enumerate(range(0, len(train), cfg.batch_size), start=1):
                idx = order[offset:offset + cfg.batch_size]
                x, y = images[idx], labels[idx]
                logits = model(x)
                loss = criterion(logits, y)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at epoch {epoch}, step {step}: training diverged. "
                        f"Lower lr ({cfg.lr}) or set grad_clip (now {cfg.grad_clip}); no checkpoint was written")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(1) == y).sum()
                bar.update(len(idx))
                if bar.n and step % 20 == 0:
                    seen = bar.n
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}",
                                    rate=f"{seen / (time.perf_counter() - epoch_start):.0f}/s")
        train_seconds = time.perf_counter() - epoch_start
        valid_loss, valid_acc = loss_and_accuracy(
            predict_logits(model, valid.images, 1024, device), valid.labels.to("cpu"))
        if not math.isfinite(valid_loss):
            raise TrainingError(f"validation loss became {valid_loss} after epoch {epoch}: training diverged; "
                                f"lower lr ({cfg.lr}) or set grad_clip; no checkpoint was written")
        record = EpochRecord(epoch=epoch, train_loss=loss_sum.item() / len(train),
                             train_accuracy=correct.item() / len(train), valid_loss=valid_loss,
                             valid_accuracy=valid_acc, lr=scheduler.get_last_lr()[0],
                             elapsed_s=time.perf_counter() - start, samples_per_s=len(train) / train_seconds)
        history.append(record)
        if stopper.update(epoch, valid_loss):
            best_state = copy.deepcopy(model.state_dict())
        log(f"epoch {epoch:>3}/{cfg.epochs}  train loss {record.train_loss:.4f} acc {record.train_accuracy:.4f}  "
            f"valid loss {valid_loss:.4f} acc {valid_acc:.4f}  {record.samples_per_s:,.0f} img/s"
            + ("  *best" if stopper.best_epoch == epoch else ""))
        if on_epoch is not None:
            on_epoch(record)
        if stopper.should_stop:
            log(f"early stop: no better validation loss for {cfg.patience} epochs; "
                f"selected epoch {stopper.best_epoch}")
            break
    model.load_state_dict(best_state)
    return TrainResult(model=model.cpu(), history=history, selected_epoch=stopper.best_epoch,
                       stopped_early=len(history) < cfg.epochs)
