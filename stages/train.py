"""train_<model>: train one model on the prepared tensors, data-parallel over `workers` processes, and keep the
epoch with the best validation loss; with --teacher-logits, distill from the teacher's cached logits of the
training images too (stage teacher_logits; unless the block's distill.alpha is 0: then they are not read). An interrupted run resumes from its last finished epoch."""

import argparse
import os
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)

from fmnist_seq.config import TRAINED_NAMES
from fmnist_seq.distributed import LAUNCHER_PID_ENV, die_with_launcher, launched_by_torchrun, worker_rank
from fmnist_seq.snapshot import Snapshots
from fmnist_seq.stage import run_stage
from fmnist_seq.training_stage import StageFiles, run, train_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, choices=TRAINED_NAMES, help="which params block: train_<model>")
    parser.add_argument("--data", required=True, help="prepared data folder (train.pt, valid.pt, stats.json)")
    parser.add_argument("--checkpoint", required=True, help="where the selected checkpoint goes")
    parser.add_argument("--live-dir", required=True, help="this model's own dvclive folder (metrics, plots)")
    parser.add_argument("--timings", required=True, help="JSON with the run's wall times and images/s")
    parser.add_argument("--teacher-logits", help="the teacher's logits of the training images (stage teacher_logits) "
                        "to distill from; read only if the block's distill.alpha > 0")
    args = parser.parse_args()
    files = StageFiles(args.model, Path(args.data), Path(args.checkpoint), Path(args.live_dir), Path(args.timings),
                       Path(args.teacher_logits) if args.teacher_logits else None)
    if launched_by_torchrun():  # one of the workers (launched by the stage itself, or by torchrun by hand)
        die_with_launcher()
        rank = worker_rank()
        run_stage(f"{files.stage} (rank {rank})",
                  lambda: train_worker(files, group_owner=LAUNCHER_PID_ENV in os.environ),
                  outputs=files.outputs if rank == 0 else [], quiet_interrupt=True)
    else:
        found: list[Snapshots] = []
        run_stage(files.stage, lambda: run(files, sys.argv[0], sys.argv[1:], found), outputs=files.outputs,
                  on_interrupt=lambda: found[0].describe_saved() if found else "nothing was saved")


if __name__ == "__main__":
    main()
