"""teacher_logits: the trained teacher's logits of every training image (eval mode, fp32), computed once per
teacher and read by train_lstm, which softens them at its own distill.temperature (a temperature sweep does not
rerun this stage)."""

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)

from fmnist_seq.config import TrainConfig, load_block
from fmnist_seq.distributed import resolve_device
from fmnist_seq.stage import run_stage
from fmnist_seq.teacher import write_teacher_logits


def compute(args: argparse.Namespace) -> None:
    # On the teacher's device (train_teacher.device): with params.yaml's `auto` for teacher and student alike, the
    # device on which the student's run computed them before they were cached, so the same bits.
    device = resolve_device(load_block(TrainConfig, "train_teacher").device)
    write_teacher_logits(Path(args.teacher), Path(args.data), Path(args.out), Path(args.timings), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, help="the trained teacher's checkpoint (train_teacher)")
    parser.add_argument("--data", required=True, help="prepared data folder (train.pt)")
    parser.add_argument("--out", required=True, help="where the logits file goes")
    parser.add_argument("--timings", required=True, help="JSON with the pass's wall time and images/s")
    args = parser.parse_args()
    run_stage("teacher_logits", lambda: compute(args), outputs=[args.out, args.timings])


if __name__ == "__main__":
    main()
