"""train_rnn / train_gru: train one model on the prepared tensors, data-parallel over `workers` processes,
and keep the epoch with the best validation loss. An interrupted run resumes from its last finished epoch."""

import argparse
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)
import torch

from fmnist_seq.checkpoint import save_checkpoint
from fmnist_seq.config import MODEL_NAMES, TrainConfig, as_dict, load_block, training_seed
from fmnist_seq.data import STATS_FILE, load_normalization, load_split
from fmnist_seq.distributed import (die_with_launcher, join, launch, launched_by_torchrun, resolve_device,
                                    resolve_workers, worker_rank)
from fmnist_seq.errors import TrainingError
from fmnist_seq.snapshot import RunKey, Snapshots, declared_code, snapshot_folder
from fmnist_seq.stage import run_stage
from fmnist_seq.tracking import log_epoch, log_result, open_live, write_timings
from fmnist_seq.training import fit


def snapshots_of(args: argparse.Namespace, cfg: TrainConfig, seed: int, workers: int) -> Snapshots:
    stage = f"train_{args.model}"
    data = [Path(args.data) / name for name in ("train.pt", "valid.pt", STATS_FILE)]
    return Snapshots(RunKey.of(stage, as_dict(cfg), seed, workers, data, declared_code(stage)), snapshot_folder())


def train(args: argparse.Namespace) -> None:
    """The work of one worker (the only one when workers is 1); rank 0 writes every file."""
    cfg = load_block(TrainConfig, f"train_{args.model}")
    seed = training_seed(cfg)
    with join(cfg.device) as worker:
        train_split, valid = load_split(args.data, "train"), load_split(args.data, "valid")
        norm = load_normalization(args.data)
        snapshots = snapshots_of(args, cfg, seed, worker.world_size)
        if not worker.is_main:
            fit(cfg, train_split, valid, norm, seed, worker, snapshots=snapshots)
            return
        print(f"train_{args.model}: {len(train_split)} train / {len(valid)} valid images, {worker.world_size} "
              f"worker(s) on {worker.device} with {torch.get_num_threads()} thread(s) each, {cfg.model}")
        with open_live(args.live_dir) as live:
            result = fit(cfg, train_split, valid, norm, seed, worker, on_epoch=lambda record: log_epoch(live, record),
                         snapshots=snapshots)
            log_result(live, result, f"{args.model.upper()} learning curve")
        save_checkpoint(args.checkpoint, result.model, as_dict(cfg), result.selected_epoch,
                        {"loss": result.selected.valid_loss, "accuracy": result.selected.valid_accuracy},
                        [r.results() for r in result.history])
        write_timings(args.timings, result, worker, torch.get_num_threads())
        snapshots.remove()  # the outputs are complete: nothing left to resume
        print(f"train_{args.model}: selected epoch {result.selected_epoch} (valid loss "
              f"{result.selected.valid_loss:.4f}, accuracy {result.selected.valid_accuracy:.4f}) -> {args.checkpoint}")


def start(args: argparse.Namespace, found: list[Snapshots]) -> None:
    """Validate the params block, then train here (one worker) or launch the workers (several)."""
    cfg = load_block(TrainConfig, f"train_{args.model}")
    workers = resolve_workers(cfg.workers, resolve_device(cfg.device), cfg.batch_size, f"train_{args.model}")
    found.append(snapshots_of(args, cfg, training_seed(cfg), workers))  # for the interrupt message
    if workers == 1:
        train(args)
        return
    try:
        launch(workers, sys.argv[0], sys.argv[1:], max_restarts=cfg.max_restarts)
    except TrainingError as exc:
        raise TrainingError(f"{exc}; {found[0].describe_saved()}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, choices=MODEL_NAMES, help="which params block: train_<model>")
    parser.add_argument("--data", required=True, help="prepared data folder (train.pt, valid.pt, stats.json)")
    parser.add_argument("--checkpoint", required=True, help="where the selected checkpoint goes")
    parser.add_argument("--live-dir", required=True, help="this model's own dvclive folder (metrics, plots)")
    parser.add_argument("--timings", required=True, help="JSON with the run's wall times and images/s")
    args = parser.parse_args()
    stage, outputs = f"train_{args.model}", [args.checkpoint, args.live_dir, args.timings]
    if launched_by_torchrun():  # one of the workers (launched by the stage itself, or by torchrun by hand)
        die_with_launcher()
        rank = worker_rank()
        run_stage(f"{stage} (rank {rank})", lambda: train(args), outputs=outputs if rank == 0 else [],
                  quiet_interrupt=True)
    else:
        found: list[Snapshots] = []
        run_stage(stage, lambda: start(args, found), outputs=outputs,
                  on_interrupt=lambda: found[0].describe_saved() if found else "nothing was saved")


if __name__ == "__main__":
    main()
