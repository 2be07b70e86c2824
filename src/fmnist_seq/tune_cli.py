"""fmnist-tune: an Optuna study over one model's training recipe, on the pipeline's prepared data.

  fmnist-tune --model gru --trials 30 --jobs 2
  fmnist-tune --model gru --storage postgresql://user:pass@db-host/optuna    # on every machine of a search
  fmnist-tune --model gru --trials 0 --queue-best 3                          # report, and queue the top 3

The search space, sampler, pruner and storage come from params.yaml's `tune` block; the block searched is
train_<model>, with the sampled values applied and checked as the training stage checks them. A rerun of
the same command continues the study. At the end (or on Ctrl-C) it prints the best trials and writes
results/tune/<study>/ (summary.md, trials.csv, Optuna's pictures); the printed `dvc exp run -S ...`
retrains a trial through the pipeline, exactly. docs/tuning.md has the whole story.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from fmnist_seq import interrupts
from fmnist_seq.config import MODEL_NAMES, TrainConfig, build, read_params
from fmnist_seq.distributed import resolve_device
from fmnist_seq.errors import ParamsError, PipelineError
from fmnist_seq.machine import usable_cpus
from fmnist_seq.precision import check_precision
from fmnist_seq.search_space import TuneConfig, build_tune
from fmnist_seq.snapshot import file_sha256
from fmnist_seq.study import (Objective, Prepared, StudyError, display_url, fail_stale_trials, load_prepared,
                              open_storage, open_study, run_trials, running_trials, set_threads)
from fmnist_seq.tune_report import (exp_command, finished, pruning, queue_best, shell, table, write_results)

NAME = "fmnist-tune"
DEFAULT_TEACHER = Path("models/teacher.pt")  # train_teacher's output (dvc.yaml), which train_lstm distills from
# After a stop, how long a job may take to close its trial (one Optuna write, then the process ends: a second or
# two) before it is killed and its trial lost
STOP_TIMEOUT_S = 10.0


def parse_jobs(text: str) -> int:
    if text == "auto":
        return usable_cpus()
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jobs (an integer, or auto)") from None
    if not 1 <= jobs <= 256:
        raise argparse.ArgumentTypeError(f"{jobs} jobs: give 1 to 256, or auto")
    return jobs


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=NAME, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODEL_NAMES, required=True, help="the block searched: train_<model>")
    p.add_argument("--space", help="which of tune.spaces (default: the model's name)")
    p.add_argument("--study", help="the study's name in the storage (default: the space's name)")
    p.add_argument("--trials", type=parse_count, help="trials this run adds, over all its jobs (default: tune.trials)")
    p.add_argument("--jobs", type=parse_jobs, default=1, help="parallel trial processes on this machine, or auto "
                   "(one per usable CPU core); each gets cores/jobs threads")
    p.add_argument("--storage", help="journal file path or database URL (default: tune.storage)")
    p.add_argument("--data", type=Path, default=Path("data/prepared"), help="the prepared data (dvc repro prepare)")
    p.add_argument("--teacher", type=Path, help="the trained model a distilling block (distill.alpha > 0) learns "
                   f"from (default: {DEFAULT_TEACHER}, what dvc repro train_teacher writes); its logits of the "
                   "training images are computed once, as stage teacher_logits does, and every trial reads them")
    p.add_argument("--out", type=Path, default=Path("results/tune"), help="results/tune/<study>/ gets the report")
    p.add_argument("--top", type=parse_count, default=10, help="rows in the table of best trials")
    p.add_argument("--queue-best", type=parse_count, default=0, metavar="K",
                   help="queue the best K trials as DVC experiments (then `dvc queue start`)")
    return p


class _NotATerminal:
    """stderr that says it is no terminal: parallel trials' live progress bars would fight over one line, so
    each job reports with its own lines instead (training shows a bar only on a terminal)."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@dataclass(frozen=True)
class Search:
    """One run of the command: what every trial process needs to take part (pickled to the job processes)."""

    model: str
    space_name: str
    base: dict[str, Any]  # the train_<model> block the trials change
    cfg: TuneConfig
    data_dir: Path
    storage_url: str
    study_name: str
    jobs: int
    cpus: int
    teacher: Path | None  # the checkpoint a distilling block learns from; None when no trial distills
    device: str = "cpu"  # the block's device: where the teacher's logits are computed, as each trial's run did

    def load(self) -> Prepared:
        """The prepared data, and the teacher's logits (computed once in this process, read by every trial)."""
        return load_prepared(self.data_dir, self.teacher, resolve_device(self.device))

    def open(self, data: Prepared) -> optuna.Study:
        storage = open_storage(self.storage_url, self.jobs)
        return open_study(self.study_name, storage, self.cfg, self.model, self.base, data.sha256)

    def objective(self, data: Prepared, prefix: str = "") -> Objective:
        return Objective(self.model, self.cfg.spaces[self.space_name], self.base, self.cfg, data,
                         say=lambda line: print(prefix + line, flush=True))


def _job(job: int, search: Search, tickets) -> None:
    """One of several trial processes (started with spawn: a clean interpreter, no copied torch state). It runs
    trials while `tickets` (a semaphore shared by the jobs, one per trial of this run) has one to give."""
    from fmnist_seq.distributed import die_with_launcher
    die_with_launcher()  # never outlive the fmnist-tune that started it
    try:
        # SIGTERM from fmnist-tune, or a terminal's Ctrl-C: close the running trial, then stop. A Ctrl-C that came
        # while this process imported its modules was held back until now (interrupts.held): it stops here.
        interrupts.install()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sys.stderr = _NotATerminal(sys.stderr)
        set_threads(search.jobs, search.cpus)
        data = search.load()
        study = search.open(data)
        run_trials(study, search.objective(data, f"[job {job + 1}/{search.jobs}] "),
                   take=lambda: tickets.acquire(block=False))
    except KeyboardInterrupt as exc:
        sys.exit(interrupts.exit_code(exc))
    except PipelineError as exc:
        print(f"{NAME}: job {job + 1}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception:  # a bug, a CUDA error: its traceback, then fmnist-tune reports (as with --jobs 1, run())
        traceback.print_exc()
        sys.exit(1)


def plan(args: argparse.Namespace) -> tuple[Search, int]:
    """The search the command line and params.yaml describe, and its number of trials; checked before any."""
    params = read_params()
    cfg = build_tune(params.get("tune")) if "tune" in params else None
    if cfg is None:
        raise ParamsError("params.yaml: missing block 'tune' (fmnist-tune's search spaces, docs/tuning.md)")
    space_name = args.space or args.model
    if space_name not in cfg.spaces:
        raise ParamsError(f"params.yaml: tune.spaces has no {space_name!r}; spaces there: {', '.join(cfg.spaces)}")
    space = cfg.spaces[space_name]
    if space.model != args.model:
        raise ParamsError(f"params.yaml: tune.spaces.{space_name} searches train_{space.model}, not train_{args.model}")
    block = f"train_{args.model}"
    if block not in params:
        raise ParamsError(f"params.yaml: missing block '{block}'")
    base = params[block]
    base_cfg = build(TrainConfig, base, block)  # the block itself must be valid before any trial changes it
    device = resolve_device(base_cfg.device)  # device: cuda without a GPU stops here, not in every trial
    # Once for the search, not per trial: its trials train in bf16 when the block does, or when the space samples it
    sampled = space.params.get("precision")
    if base_cfg.precision == "bf16" or (sampled is not None and "bf16" in (sampled.choices or [])):
        check_precision(block, "bf16", device)
    distills = base_cfg.distill.alpha > 0 or "distill.alpha" in space.params
    if args.teacher is not None and not distills:
        raise ParamsError(f"--teacher {args.teacher}: {block}.distill.alpha is 0 and tune.spaces.{space_name} does "
                          "not search it, so no trial would learn from a teacher; drop --teacher")
    trials = cfg.trials if args.trials is None else args.trials
    search = Search(args.model, space_name, base, cfg, args.data, args.storage or cfg.storage,
                    args.study or space_name, args.jobs, usable_cpus(),
                    (args.teacher or DEFAULT_TEACHER) if distills else None, base_cfg.device)
    return search, trials


def run(args: argparse.Namespace) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this command says what happens in its own lines
    search, trials = plan(args)
    data = search.load()
    study = search.open(data)
    report_folder = args.out / search.study_name
    try:  # now, not after the trials: a report that cannot be written would lose nothing but time
        report_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"cannot write the report to {report_folder}: {exc.strerror or exc}: give --out a "
                         "folder you can write") from None
    print(f"{NAME}: study {search.study_name!r} in {display_url(search.storage_url)}: {len(study.trials)} trials "
          f"so far; {trials} more over {search.jobs} job(s) with {max(1, search.cpus // search.jobs)} thread(s) "
          f"each, up to {search.cfg.epochs} epochs each, {search.cfg.pruner.name} pruning", flush=True)
    stop: KeyboardInterrupt | None = None
    failed: list[str] = []
    try:
        if trials and search.jobs == 1:
            set_threads(1, search.cpus)
            failed = _run_here(search, data, study, trials)
        elif trials:
            failed = _run_jobs(search, trials, study)
    except KeyboardInterrupt as exc:
        stop = exc
    with interrupts.deferred():  # a stop now lets the report finish
        fail_stale_trials(study)  # a job killed outright (out of memory) left its trial running
        report(args, search, study, stop is not None or interrupts.requested())
    if failed:
        raise StudyError(f"{'; '.join(failed)}; the study keeps every finished trial and the report is written")
    return interrupts.exit_code(stop) if stop is not None or interrupts.requested() else 0


def _run_here(search: Search, data: Prepared, study: optuna.Study, trials: int) -> list[str]:
    """The trials of --jobs 1, in this process; returns what went wrong, as _run_jobs does for its jobs: an error
    that is not a failed trial (a bug, a CUDA error) ends the search the same way with one job or several, its
    message or traceback first, then the report."""
    try:
        run_trials(study, search.objective(data), trials=trials)
    except PipelineError as exc:
        print(f"{NAME}: error: {exc}", file=sys.stderr, flush=True)
        return ["the search stopped with an error (above)"]
    except Exception:
        traceback.print_exc()
        return ["the search stopped with an error (above)"]
    return []


def _run_jobs(search: Search, trials: int, study: optuna.Study) -> list[str]:
    """Start one process per job and wait; returns what went wrong with each job that failed, raises
    Interrupted on a stop (of this process, or of a job by itself)."""
    context = multiprocessing.get_context("spawn")
    # One pool of trials for all jobs, not a fixed share each: trials differ in length several times over (a
    # 64-wide RNN against a 2-layer bi-LSTM, a pruned trial against a finished one), and with fixed shares the
    # job that drew the short ones sat idle while the other still had a queue.
    tickets = context.Semaphore(trials)
    processes = [context.Process(target=_job, args=(i, search, tickets), name=f"job-{i + 1}")
                 for i in range(min(search.jobs, trials))]
    try:
        # Each job takes its stops once it can close a trial, not while it imports torch; one that reached this
        # process meanwhile is raised as the block ends, with every job started.
        with interrupts.held():
            for process in processes:
                process.start()
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        _stop_jobs(processes, study)
        raise
    for process in processes:  # a job stopped by itself (`kill` of its pid): a stop, with that job's signal
        signum = interrupts.stop_of_exit_code(process.exitcode)
        if signum is not None:
            raise interrupts.interrupted(signum)
    return [f"{p.name} {_ended(p.exitcode)}" for p in processes if p.exitcode != 0]


def _stop_jobs(processes: list, study: optuna.Study) -> None:
    """Stop the jobs and wait, STOP_TIMEOUT_S at most or until another stop comes, for each to close its trial; a
    job still running then is killed (a trial stuck in a CUDA call or a lock hears no signal), and the trial it
    ran is named as lost: fmnist-tune closes it as failed before the report."""
    # A terminal's Ctrl-C reached the jobs already, a `kill` of this process did not: SIGTERM to each. A job that
    # is closing its trial notes the second signal and goes on (interrupts.py).
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.terminate()
    if alive:
        print(f"stopping: waiting up to {STOP_TIMEOUT_S:g} s for {len(alive)} job(s) to close their trials "
              "(Ctrl-C again: stop them now)", flush=True)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while alive and not interrupts.stopped_again() and time.monotonic() < deadline:
        # short waits: a second Ctrl-C only notes itself (interrupts.py), it interrupts no wait
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=min(0.2, deadline - time.monotonic()))
        alive = [p for p in alive if p.is_alive()]
    stuck = [p for p in processes if p.is_alive()]
    for process in stuck:
        process.kill()
    for process in stuck:
        process.join()
    if not stuck:
        return
    running = running_trials(study, [p.pid for p in stuck])
    when = "at the second stop" if interrupts.stopped_again() else f"within {STOP_TIMEOUT_S:g} s"
    for process in stuck:
        numbers = running.get(process.pid, [])
        lost = (f"its trial {', '.join(map(str, numbers))} is lost (closed as failed)" if numbers
                else "it ran no trial")
        print(f"{NAME}: {process.name} did not stop {when}: killed; {lost}", file=sys.stderr, flush=True)


def _ended(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return "stopped with an error (above)"


def no_retrain(search: Search) -> str | None:
    """Why no `dvc exp run` retrains the search's trials exactly, or None. The pipeline's train_lstm learns from
    DEFAULT_TEACHER's logits (stage teacher_logits, dvc.yaml), so trials that learned from other bytes (--teacher) have no such command."""
    if search.teacher is None or search.teacher.resolve() == DEFAULT_TEACHER.resolve():
        return None
    if DEFAULT_TEACHER.is_file() and file_sha256(DEFAULT_TEACHER) == file_sha256(search.teacher):
        return None
    return (f"they learned from {search.teacher}, and the pipeline's train_{search.model} learns from "
            f"{DEFAULT_TEACHER} (dvc.yaml), " + ("another checkpoint" if DEFAULT_TEACHER.is_file() else "not there")
            + "; each trial's values and seed are in trials.csv")


def report(args: argparse.Namespace, search: Search, study: optuna.Study, interrupted: bool) -> None:
    cfg, folder, unexact = search.cfg, args.out / study.study_name, no_retrain(search)
    print(("\ninterrupted: " if interrupted else "\n") + pruning(study, cfg.epochs).line(cfg.epochs))
    print(table(study, args.top))
    try:
        skipped = write_results(study, folder, cfg.epochs, args.top, unexact)
    except OSError as exc:
        raise StudyError(f"cannot write the report to {folder}: {exc.strerror or exc}; the study keeps its trials: "
                         f"`{NAME} --model {study.user_attrs.get('model')} --trials 0 --out FOLDER` writes it "
                         "elsewhere") from None
    print(f"report: {folder}/summary.md, trials.csv and pictures"
          + "".join(f"\n  {name} skipped: {why}" for name, why in skipped.items()))
    best = finished(study)
    if not best:
        return
    if unexact:
        print(f"\nno `dvc exp run` retrains these trials exactly: {unexact}")
        if args.queue_best:
            raise StudyError(f"--queue-best: {unexact}")
        return
    print("\nretrain the best trial through the pipeline (checkpoint, test metrics, ONNX, dvc exp show):")
    print("  " + shell(exp_command(study, best[0])))
    if args.queue_best and not interrupted:
        names = queue_best(study, args.queue_best)
        print(f"queued {len(names)} experiment(s): {', '.join(names)}; run them with `dvc queue start`")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    interrupts.install()  # Ctrl-C, `kill`, a scheduler's stop: the running trials fail, the report is written
    try:
        code = run(args)
    except PipelineError as exc:
        print(f"{NAME}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt as exc:
        print(f"{NAME}: interrupted", file=sys.stderr)
        code = interrupts.exit_code(exc)
    sys.exit(code)


if __name__ == "__main__":
    main()
