"""The training loop: data-parallel over the workers, validated each epoch, best-validation epoch selected.

The tensors stay in memory (no DataLoader): each epoch is one seeded permutation, cut into global batches of
`batch_size`; every worker trains on its shard of each batch and DistributedDataParallel averages the
gradients, so one worker or many follow the same recipe with the same learning rate. With `snapshots`, the
state after every epoch is saved, and a run that finds its own snapshot continues from it exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fmnist_seq.augment import augment
from fmnist_seq.config import DistillConfig, TrainConfig
from fmnist_seq.data import Normalization, Split
from fmnist_seq.distributed import (Worker, all_gather_objects, all_reduce_sum, broadcast_buffers, broadcast_flag,
                                    broadcast_object, gather_chunks, shard)
from fmnist_seq.errors import TrainingError
from fmnist_seq.models import Classifier, build_model, predict_logits
from fmnist_seq.precision import autocast
from fmnist_seq.snapshot import Snapshots
from fmnist_seq.teacher import TeacherLogits

VALID_BATCH = 1024


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    # Running figures over the epoch's batches: dropout on, weights moving, plain cross-entropy (no smoothing).
    train_loss: float
    train_accuracy: float
    # The end-of-epoch model in eval mode on the validation split.
    valid_loss: float
    valid_accuracy: float
    mean_lr: float  # the mean learning rate of the epoch's optimizer steps (the schedule moves it every step)
    elapsed_s: float  # wall time since training started, at the end of this epoch
    images_per_s: float  # training images per second in this epoch, all workers together

    def results(self) -> dict[str, float]:
        """The figures that the same params and seed reproduce exactly (no wall times)."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, "train_accuracy": self.train_accuracy,
                "valid_loss": self.valid_loss, "valid_accuracy": self.valid_accuracy, "mean_lr": self.mean_lr}


@dataclass
class EarlyStopping:
    """Remember the epoch with the lowest validation loss; stop after `patience` epochs without one.

    patience 0 never stops early (the best epoch is still selected).
    """

    patience: int
    best_loss: float = math.inf
    best_epoch: int = 0
    stale_epochs: int = 0

    def state(self) -> dict[str, float | int]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "stale_epochs": self.stale_epochs}

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
    model: Classifier  # on rank 0: the selected (best validation loss) weights
    history: list[EpochRecord]
    selected_epoch: int
    snapshot_seconds: list[float] = dataclasses.field(default_factory=list)  # each snapshot write of this process

    @property
    def selected(self) -> EpochRecord:
        return self.history[self.selected_epoch - 1]


def seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        # cuBLAS is deterministic only with a fixed workspace, read when the first handle is made, which is
        # after this; a value the user set wins. cuDNN's RNN kernels have no deterministic variant for
        # every case: warn instead of failing.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
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
    """Stepped once per batch; `lr` is the peak for onecycle (reached after `warmup` of the steps, then
    annealed), and the start for cosine."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=cfg.warmup)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def global_batches(n_images: int, batch_size: int, world_size: int) -> list[slice]:
    """The epoch's global batches over a permutation of n_images.

    A last batch with fewer images than workers is dropped (one or more workers would have none); with
    one worker nothing is ever dropped.
    """
    batches = [slice(start, min(start + batch_size, n_images)) for start in range(0, n_images, batch_size)]
    if batches and batches[-1].stop - batches[-1].start < world_size:
        batches.pop()
    return batches


@dataclass
class Step:
    """One optimizer step; `fit` and the throughput benchmark share it, so they time the same work."""

    model: nn.Module  # the DistributedDataParallel wrapper when there are several workers
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    grad_clip: float
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    precision: str = "fp32"  # the forward pass's arithmetic (precision.py); weights and optimizer stay fp32

    def __call__(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0,
                 teacher: torch.Tensor | None = None) -> torch.Tensor:
        """Train on (x, y), and on the teacher's softened probabilities of x when given; `weight` scales this
        worker's loss so that averaging over workers gives the mean over the whole global batch (1.0 whenever
        the shards are equal). Returns the logits, in fp32."""
        with autocast(self.precision, x.device):
            logits = self.model(x)
        # The loss, its softmax and the teacher's term in fp32 whatever the forward ran in: bf16's 8-bit mantissa
        # would round the small log-probabilities that label smoothing and the KL term sum. A no-op in fp32.
        logits = logits.float()
        loss = self.criterion(logits, y)
        if teacher is not None:
            t, alpha = self.distill.temperature, self.distill.alpha
            # T^2 keeps the soft term's gradients on the labels' scale at any temperature (Hinton et al., 2015)
            soft = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1), teacher, reduction="batchmean")
            loss = (1 - alpha) * loss + alpha * t * t * soft
        self.optimizer.zero_grad(set_to_none=True)
        # Outside autocast, as PyTorch recommends: each op's backward runs in the dtype its forward ran in.
        (loss if weight == 1.0 else loss * weight).backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return logits.detach()


def make_step(cfg: TrainConfig, model: Classifier, worker: Worker, steps_per_epoch: int) -> Step:
    trained: nn.Module = model
    if worker.distributed:
        # The normalization buffers never change: synced once at the start, not before every forward. A CNN
        # teacher's BatchNorm statistics do: rank 0's go to every rank before each training forward (each rank's
        # own shard then moves its copy; `validate` syncs them again).
        running_stats = any(name.endswith("running_mean") for name, _ in model.named_buffers())
        trained = DistributedDataParallel(model, forward_sync_buffers=running_stats)
    optimizer = make_optimizer(cfg, model)
    return Step(model=trained, optimizer=optimizer, scheduler=make_scheduler(cfg, optimizer, steps_per_epoch),
                criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), grad_clip=cfg.grad_clip,
                distill=cfg.distill, precision=cfg.precision)


def validate(model: Classifier, split: Split, worker: Worker) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on `split`; each worker predicts one contiguous part of it, with rank 0's
    buffers: every part is predicted by the model that rank 0 saves (a BatchNorm's running statistics differ
    between ranks after training, each rank's last batches being its own shard)."""
    broadcast_buffers(model, worker)
    part = torch.tensor_split(split.images, worker.world_size)[worker.rank]
    logits = gather_chunks(predict_logits(model, part, VALID_BATCH, worker.device).to(worker.device), worker).cpu()
    labels = split.labels.cpu()
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    # A live bar on a terminal; under `dvc repro` piped to a log, one summary line per epoch instead.
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def _random_states(worker: Worker) -> dict[str, list[torch.Tensor]]:
    """Every rank's torch generator states (its dropout masks), in rank order, on every rank (a collective)."""
    mine = {"cpu": torch.get_rng_state()}
    if worker.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(worker.device)
    ranks = all_gather_objects(mine, worker)
    return {kind: [r[kind] for r in ranks] for kind in mine}


def _set_random_states(states: dict[str, list[torch.Tensor]], worker: Worker) -> None:
    torch.set_rng_state(states["cpu"][worker.rank])
    if "cuda" in states and worker.device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"][worker.rank], worker.device)


@dataclass(frozen=True)
class TrainingJob:
    """What one training run learns from: the block, the data, the seed, this process's place in the run, and the
    teacher's logits of the training images it distills from (when the block's distill.alpha is above 0)."""

    cfg: TrainConfig
    train: Split
    valid: Split
    norm: Normalization
    seed: int
    worker: Worker = dataclasses.field(default_factory=Worker)
    teacher: TeacherLogits | None = None  # row i: training image i (teacher.py)


def teacher_probabilities(job: TrainingJob) -> torch.Tensor | None:
    """The teacher's probabilities of every training image, softened at the block's temperature, on the device
    (every worker holds all rows and takes those of its own images); None without distillation."""
    if job.cfg.distill.alpha == 0:
        return None
    if job.teacher is None:
        raise TrainingError(f"distill.alpha is {job.cfg.distill.alpha} but no teacher was given: pass the training "
                            "stage the teacher's logits with --teacher-logits, or set distill.alpha to 0")
    job.teacher.check(job.train.images, "the teacher's logits")
    return job.teacher.probabilities(job.cfg.distill.temperature).to(job.worker.device)


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it stopped: the model, the optimizer step (optimizer and
    schedule), the shuffling and dropout random streams, early stopping, the best weights and the history. Saved
    after each epoch and restored on resume; a new piece of state is a field here and a line in each of
    `state_dict` and `restore`."""

    model: Classifier
    step: Step
    shuffler: torch.Generator  # the same permutation on every worker
    augmenter: torch.Generator  # the same changes to each global batch on every worker (augment)
    stopper: EarlyStopping
    best_model: dict[str, torch.Tensor]
    history: list[EpochRecord]

    @classmethod
    def start(cls, job: TrainingJob, steps_per_epoch: int, saved: dict[str, Any] | None = None) -> TrainingState:
        """A fresh run's state (seeded from the job), or the `saved` state of an interrupted one."""
        seed_everything(job.seed, job.worker.device)
        model = build_model(job.cfg.model, job.norm.mean, job.norm.std).to(job.worker.device)
        if job.worker.rank:  # its own dropout masks; rank 0 keeps the single-process random stream
            torch.manual_seed(job.seed + job.worker.rank)
        if saved is not None:
            model.load_state_dict(saved["model"])  # before DDP wraps it: DDP starts from rank 0's weights
        state = cls(model=model, step=make_step(job.cfg, model, job.worker, steps_per_epoch),
                    shuffler=torch.Generator().manual_seed(job.seed),
                    augmenter=torch.Generator().manual_seed((job.seed + 1) % 2**63),
                    stopper=EarlyStopping(job.cfg.patience),
                    best_model={}, history=[])
        if saved is not None:
            state.restore(saved, job.worker)
        return state

    @property
    def epoch(self) -> int:
        """The last finished epoch (0 before the first)."""
        return len(self.history)

    def state_dict(self, worker: Worker) -> dict[str, Any]:
        """The whole state, on rank 0 (a collective: every rank takes part, for its random state)."""
        random_states = _random_states(worker)
        return {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.step.optimizer.state_dict(),
                "scheduler": self.step.scheduler.state_dict(), "shuffler": self.shuffler.get_state(),
                "augmenter": self.augmenter.get_state(),
                "random": random_states, "stopper": self.stopper.state(), "best_model": self.best_model,
                "history": [dataclasses.asdict(r) for r in self.history]}

    def restore(self, saved: dict[str, Any], worker: Worker) -> None:
        """Everything but the model's weights, which `start` loads before DDP wraps the model."""
        self.step.optimizer.load_state_dict(saved["optimizer"])
        self.step.scheduler.load_state_dict(saved["scheduler"])
        self.shuffler.set_state(saved["shuffler"])
        self.augmenter.set_state(saved["augmenter"])
        _set_random_states(saved["random"], worker)
        self.stopper = EarlyStopping(self.stopper.patience, **saved["stopper"])
        self.best_model = saved["best_model"]
        self.history = [EpochRecord(**record) for record in saved["history"]]

    def finish_epoch(self, record: EpochRecord, keep_weights: bool) -> bool:
        """Record an epoch; keep its weights (on the rank that returns them) when it is the best so far."""
        self.history.append(record)
        best = self.stopper.update(record.epoch, record.valid_loss)
        if best and keep_weights:
            self.best_model = copy.deepcopy(self.model.state_dict())
        return best


def train_epoch(state: TrainingState, job: TrainingJob, data: tuple[torch.Tensor, torch.Tensor],
                teacher: torch.Tensor | None, batches: list[slice], epoch: int) -> tuple[float, float, float, float]:
    """One pass over the train split (`data`: its images and labels on the device; `teacher`: the teacher's
    probabilities of them) in seeded global batches; (loss sum, correct predictions, images) over all workers,
    and the mean learning rate of its steps."""
    worker, device, changes = job.worker, job.worker.device, job.cfg.augment
    images, labels = data
    state.model.train()
    order = torch.randperm(len(job.train), generator=state.shuffler).to(device)
    # loss sum, correct predictions, images seen: summed over the workers at the end of the epoch
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    rate_sum = 0.0  # the same schedule on every worker
    with _progress(len(job.train), f"epoch {epoch}/{job.cfg.epochs}", worker.is_main) as bar:
        for batch in batches:
            global_idx = order[batch]
            idx = shard(global_idx, worker)
            x, y = images[idx], labels[idx]
            if changes.enabled:  # drawn for the global batch, so that every worker count sees the same images
                x = shard(augment(images[global_idx], changes, state.augmenter), worker)
            rate_sum += state.step.scheduler.get_last_lr()[0]  # the rate this step uses; the step then moves it
            logits = state.step(x, y, weight=len(idx) * worker.world_size / len(global_idx),
                                teacher=teacher[idx] if teacher is not None else None)
            totals += torch.stack([nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                                   (logits.argmax(1) == y).sum().double(),
                                   torch.tensor(float(len(idx)), dtype=torch.float64, device=device)])
            bar.update(len(global_idx))
    loss_sum, correct, seen = all_reduce_sum(totals, worker).tolist()
    # Checked once per epoch (a check per step would stall a GPU on every batch): NaN and inf propagate.
    if not math.isfinite(loss_sum):
        raise TrainingError(
            f"training loss became {loss_sum / seen} in epoch {epoch}: training diverged. Lower lr ({job.cfg.lr}) "
            f"or set grad_clip (now {job.cfg.grad_clip}); no checkpoint was written")
    return loss_sum, correct, seen, rate_sum / len(batches)


def fit(job: TrainingJob, on_epoch: Callable[[EpochRecord], None] | None = None, log: Callable[[str], None] = print,
        snapshots: Snapshots | None = None) -> TrainResult:
    """Train a model from `job.cfg.model`, select the epoch with the best validation loss, return it.

    Every worker calls this with the same job; all of them stop at the same epoch. Only rank 0 logs, calls
    `on_epoch`, and returns the selected weights (the others return their last ones).
    With `snapshots`, rank 0 saves the whole training state after every epoch, and a run that finds its own
    snapshot continues from the next epoch: it ends exactly where an uninterrupted run would, and `on_epoch`
    is called for the restored epochs first, so the learning curves continue.
    """
    cfg, worker = job.cfg, job.worker
    say = log if worker.is_main else (lambda _: None)
    batches = global_batches(len(job.train), cfg.batch_size, worker.world_size)
    saved = None
    if snapshots is not None:  # rank 0 reads the file, every rank gets its content
        saved = broadcast_object(snapshots.load() if worker.is_main else None, worker)
    state = TrainingState.start(job, len(batches), saved)
    data = job.train.images.to(worker.device), job.train.labels.to(worker.device)
    if on_epoch is not None and worker.is_main:
        for record in state.history:
            on_epoch(record)
    start = time.perf_counter() - (state.history[-1].elapsed_s if state.history else 0.0)
    # The teacher's pass over the images is stage teacher_logits' (its own timings); only the softening is here.
    teacher = teacher_probabilities(job)
    if teacher is not None:
        say(f"distilling from a {job.teacher.cell} teacher (weight {cfg.distill.alpha}, temperature "
            f"{cfg.distill.temperature}): its cached logits of the {len(job.train)} training images")
    snapshot_seconds: list[float] = []
    stop = state.stopper.should_stop  # a run killed after its last epoch, before writing its outputs
    while not stop and state.epoch < cfg.epochs:
        epoch, epoch_start = state.epoch + 1, time.perf_counter()
        loss_sum, correct, seen, mean_lr = train_epoch(state, job, data, teacher, batches, epoch)
        train_seconds = time.perf_counter() - epoch_start
        valid_loss, valid_acc = validate(state.model, job.valid, worker)
        if not math.isfinite(valid_loss):
            raise TrainingError(f"validation loss became {valid_loss} after epoch {epoch}: training diverged; "
                                f"lower lr ({cfg.lr}) or set grad_clip; no checkpoint was written")
        record = EpochRecord(epoch=epoch, train_loss=loss_sum / seen, train_accuracy=correct / seen,
                             valid_loss=valid_loss, valid_accuracy=valid_acc, mean_lr=mean_lr,
                             elapsed_s=time.perf_counter() - start, images_per_s=seen / train_seconds)
        best = state.finish_epoch(record, keep_weights=worker.is_main)
        if on_epoch is not None and worker.is_main:
            on_epoch(record)
        stop = broadcast_flag(state.stopper.should_stop, worker)
        if snapshots is not None:
            snapshot_start = time.perf_counter()
            saved_state = state.state_dict(worker)  # a collective: every rank takes part
            if worker.is_main:
                snapshots.save(saved_state, finished=stop or state.epoch == cfg.epochs)
            snapshot_seconds.append(time.perf_counter() - snapshot_start)
        # Printed once the epoch is safe on disk: what this line reports survives a kill from now on.
        say(f"epoch {epoch:>3}/{cfg.epochs}  train loss {record.train_loss:.4f} acc {record.train_accuracy:.4f}  "
            f"valid loss {valid_loss:.4f} acc {valid_acc:.4f}  {record.images_per_s:,.0f} img/s"
            + ("  *best" if best else ""))
        if stop:
            say(f"early stop: no better validation loss for {cfg.patience} epochs; "
                f"selected epoch {state.stopper.best_epoch}")
    if worker.is_main:
        state.model.load_state_dict(state.best_model)
    return TrainResult(model=state.model.cpu(), history=state.history, selected_epoch=state.stopper.best_epoch,
                       snapshot_seconds=snapshot_seconds)
