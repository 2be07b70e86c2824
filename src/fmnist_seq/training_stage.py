"""A training stage's run: its key and snapshot, the training in this process or in a launched group of
data-parallel workers, rank 0's outputs (checkpoint, dvclive curves, timings), and the snapshot removed only
once the whole group is done."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fmnist_seq.checkpoint import save_checkpoint
from fmnist_seq.config import TrainConfig, as_dict, load_block, training_seed
from fmnist_seq.data import STATS_FILE, load_normalization, load_split
from fmnist_seq.distributed import join, launch, resolve_device, resolve_workers
from fmnist_seq.errors import ParamsError, TrainingError
from fmnist_seq.precision import check_precision, native_bf16
from fmnist_seq.snapshot import RunKey, Snapshots, declared_code, snapshot_folder
from fmnist_seq.teacher import REPRO_HINT, load_teacher_logits
from fmnist_seq.tracking import log_epoch, log_result, open_live, write_timings
from fmnist_seq.training import TrainingJob, fit


@dataclass(frozen=True)
class StageFiles:
    """What a training stage reads and writes (its command line)."""

    model: str  # the params block is train_<model>
    data: Path  # prepared data folder: train.pt, valid.pt, stats.json
    checkpoint: Path
    live_dir: Path  # this model's own dvclive folder
    timings: Path
    # The teacher's logits of the train split (stage teacher_logits) to distill from (the block's distill.alpha > 0)
    teacher_logits: Path | None = None

    @property
    def stage(self) -> str:
        return f"train_{self.model}"

    @property
    def outputs(self) -> list[Path]:
        return [self.checkpoint, self.live_dir, self.timings]

    @property
    def inputs(self) -> list[Path]:
        """What the run learns from, besides its params and code: the prepared data, and the teacher's logits (in
        the run key: a snapshot made with other logits is never resumed)."""
        return [self.data / name for name in ("train.pt", "valid.pt", STATS_FILE)] + (
            [self.teacher_logits] if self.teacher_logits else [])


def files_to_read(files: StageFiles, cfg: TrainConfig, log: Callable[[str], None] = lambda _: None) -> StageFiles:
    """The stage's files as the run reads them. A distilling block needs the teacher's logits; a block with
    distill.alpha 0 reads none, even when the command names them, so that one `dvc exp run -S
    train_lstm.distill.alpha=0` measures what the teacher gives without an edit of dvc.yaml (`log` says so)."""
    if cfg.distill.alpha > 0 and files.teacher_logits is None:
        raise ParamsError(f"params.yaml: {files.stage}.distill.alpha = {cfg.distill.alpha} needs the teacher's logits: "
                          "give the stage's command --teacher-logits <file> (dvc.yaml; stage teacher_logits writes "
                          "it), or set distill.alpha to 0")
    if cfg.distill.alpha > 0 and not files.teacher_logits.is_file():
        raise TrainingError(f"{files.stage}.distill.alpha = {cfg.distill.alpha} needs the teacher's logits, and "
                            f"{files.teacher_logits} is missing: {REPRO_HINT}")
    if cfg.distill.alpha == 0 and files.teacher_logits is not None:
        log(f"{files.stage}: distill.alpha is 0: training on the labels alone; the teacher's logits "
            f"{files.teacher_logits} (--teacher-logits) are not read")
        return dataclasses.replace(files, teacher_logits=None)
    return files


def snapshots_of(files: StageFiles, cfg: TrainConfig, seed: int, device: torch.device, workers: int) -> Snapshots:
    key = RunKey.of(files.stage, cfg, seed, device, workers, files.inputs, declared_code(files.stage))
    return Snapshots(key, snapshot_folder())


def train_worker(files: StageFiles, group_owner: bool) -> None:
    """The work of one worker (the only one when workers is 1); rank 0 writes every file.

    `group_owner`: a process above this one (the stage that launched it, or this very process) holds the run's
    snapshot and removes it once every worker is done. Under a `torchrun` started by hand there is none, so rank 0
    holds it and removes it after writing the outputs, when every rank has finished its last epoch."""
    cfg = load_block(TrainConfig, files.stage)
    files = files_to_read(files, cfg)
    seed = training_seed(cfg)
    with join(cfg.device) as worker:
        train = load_split(files.data, "train")
        teacher = load_teacher_logits(files.teacher_logits, train.images) if files.teacher_logits else None
        job = TrainingJob(cfg, train, load_split(files.data, "valid"), load_normalization(files.data), seed, worker,
                          teacher)
        snapshots = snapshots_of(files, cfg, seed, worker.device, worker.world_size)
        if not worker.is_main:
            fit(job, snapshots=snapshots)
            return
        print(f"{files.stage}: {len(job.train)} train / {len(job.valid)} valid images, {worker.world_size} "
              f"worker(s) on {worker.device} with {torch.get_num_threads()} thread(s) each, {cfg.precision}, "
              f"{cfg.model}")
        check_precision(files.stage, cfg.precision, worker.device)  # rank 0 only: one line per run, not per worker
        with contextlib.nullcontext() if group_owner else snapshots.held():
            with open_live(files.live_dir) as live:
                result = fit(job, on_epoch=lambda record: log_epoch(live, record), snapshots=snapshots)
                log_result(live, result, f"{files.model.upper()} learning curve")
            save_checkpoint(files.checkpoint, result.model, as_dict(cfg), result.selected_epoch,
                            {"loss": result.selected.valid_loss, "accuracy": result.selected.valid_accuracy},
                            [r.results() for r in result.history])
            write_timings(files.timings, result, worker, torch.get_num_threads(), cfg.precision,
                          native_bf16(worker.device))
            if not group_owner:
                snapshots.remove()
        print(f"{files.stage}: selected epoch {result.selected_epoch} (valid loss {result.selected.valid_loss:.4f}, "
              f"accuracy {result.selected.valid_accuracy:.4f}) -> {files.checkpoint}")


def run(files: StageFiles, script: str, args: list[str], found: list[Snapshots]) -> None:
    """Validate the params block, then train here (one worker) or launch the workers (several, each running
    `script args` as a worker), holding the run's snapshot throughout; remove it only when all of them are done."""
    cfg = load_block(TrainConfig, files.stage)
    files = files_to_read(files, cfg, log=print)
    device = resolve_device(cfg.device)
    workers = resolve_workers(cfg.workers, device, cfg.batch_size, files.stage)
    snapshots = snapshots_of(files, cfg, training_seed(cfg), device, workers)
    found.append(snapshots)  # for the interrupt message
    with snapshots.held():
        if workers == 1:
            train_worker(files, group_owner=True)
        else:
            try:
                launch(workers, script, args, max_restarts=cfg.max_restarts)
            except TrainingError as exc:
                raise TrainingError(f"{exc}; {snapshots.describe_saved()}") from None
        snapshots.remove()  # every worker finished and the outputs are written: nothing left to resume
