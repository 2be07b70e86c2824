"""Optuna studies over a training block: each trial trains through the pipeline's own `fit`, reports its
validation accuracy after every epoch, and may be pruned by the study's pruner.

The search runs outside `dvc repro` (a stage re-runs from scratch and records one set of params; a study
learns from its trials as it goes), against storage that several processes, or machines, share: Optuna's
journal file on one machine, a PostgreSQL database across many. The best trials come back into DVC as
ordinary experiments (`dvc exp run -S ...`, see tune_report.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import optuna
import psutil
import torch
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from fmnist_seq import interrupts
from fmnist_seq.config import (PER_RUN, PLACEMENT, TrainConfig, build, changed_keys, default_values, flatten,
                               keys_with_role)
from fmnist_seq.data import STATS_FILE, Normalization, Split, load_normalization, load_split
from fmnist_seq.distributed import Worker, resolve_device
from fmnist_seq.errors import ParamsError, PipelineError, TrainingError
from fmnist_seq.search_space import SEARCHABLE, Space, TuneConfig, apply, sample
from fmnist_seq.snapshot import file_sha256
from fmnist_seq.teacher import TeacherLogits, logits_of_checkpoint
from fmnist_seq.training import EpochRecord, TrainingJob, fit

# What a study remembers of how it was started; a later run against other data, another base block or another
# epoch budget would mix trials that are not comparable, so it is refused.
ATTR_MODEL, ATTR_BASE, ATTR_DATA, ATTR_EPOCHS = "model", "base_block", "data_sha256", "epochs_per_trial"
# What each trial records of the keys it set itself (trial_settings): its `dvc exp run` command sets the same.
ATTR_SETTINGS = "settings"
# The training keys a trial sets itself rather than take from the block: those config.py declares PER_RUN or
# PLACEMENT. A key declared there later gets no value in trial_settings, and every trial fails at once.
TRIAL_SET = tuple(keys_with_role(TrainConfig, PER_RUN, PLACEMENT))


class StudyError(PipelineError):
    """The study cannot run: its storage is unreachable, or it was started on other data or another block."""


def display_url(url: str) -> str:
    """A storage URL without its password, for messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else url


def open_storage(url: str, jobs: int = 1) -> optuna.storages.BaseStorage:
    """A journal file (a path) or a database (a URL). SQLite is refused for parallel jobs: it locks under
    concurrent writers ("database is locked"), Optuna's docs say so."""
    if "://" not in url:
        # Absolute: the file lock is a symlink to this path, and a relative one dangles from inside .optuna/, so a
        # lock left by a killed process could never be recognized as stale (Optuna retries it forever).
        path = Path(url).absolute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as exc:
            raise StudyError(f"cannot open the journal file {path}: {exc.strerror or exc}: give --storage (or "
                             "tune.storage) a path in a folder you can write") from None
        return optuna.storages.journal.JournalStorage(backend)
    if url.startswith("sqlite") and jobs > 1:
        raise StudyError(f"{url}: SQLite cannot serve {jobs} parallel jobs (its writers lock each other out); "
                         "use the journal file (a path, the default) on one machine or postgresql://... on many")
    try:
        return _rdb_storage(url)
    except ImportError:  # Optuna's message for a missing driver names none
        raise StudyError(f"{display_url(url)}: the database driver is not installed: for postgresql:// "
                         "pip install 'psycopg[binary]' (requirements.txt has it)") from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError: unreachable, refused, bad URL
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(f"cannot open the study storage {display_url(url)}: {first}") from None


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    # Processes that start together on an empty database race to create Optuna's tables; the losers fail on a
    # duplicate name. The tables exist by then: try again.
    for attempt in range(attempts):
        try:
            # heartbeat: a trial whose machine died or lost the network is failed by the next process that looks.
            # Optuna marks heartbeat_interval experimental with a two-line warning in every process: not the user's
            # business, who should see this program's own lines only.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=60,
                                                  grace_period=300)
        except Exception as exc:
            racing = "duplicate key" in str(exc) or "already exists" in str(exc)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def sampler_seed(cfg: TuneConfig, number: int) -> int:
    """The seed that trial `number` of a study samples with: its own, from tune.seed and its number, which the
    storage gives to one trial only. Processes that share a study so draw different trials without agreeing on
    anything, and a trial's draw depends on its recorded seed (and, past the start-up trials, on the trials
    before it), not on which process ran it or what that process ran before."""
    return int(np.random.SeedSequence([cfg.seed, number]).generate_state(1)[0])


def make_sampler(cfg: TuneConfig) -> optuna.samplers.BaseSampler:
    def sampler(seed: int) -> optuna.samplers.BaseSampler:
        if cfg.sampler.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: a running trial counts as a poor result, so parallel trials are not proposed again near
        # one that is still training (Optuna 5 defaults to it; said here so that no new default drops it)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.sampler.startup_trials, constant_liar=True)
    return TrialSeededSampler(sampler, lambda number: sampler_seed(cfg, number))


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Samples each trial with a sampler of its own, seeded for that trial (`seed_of(number)`): one seeded
    sampler per process would repeat the draws of every other process that started with the same seed."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed_of: Callable[[int], int]):
        self._make, self._seed_of = make, seed_of
        self._number: int | None = None
        self._sampler: optuna.samplers.BaseSampler | None = None

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if self._sampler is None or self._number != trial.number:  # a process runs one trial at a time
            self._number, self._sampler = trial.number, self._make(self._seed_of(trial.number))
        return self._sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner.startup_trials,
                                           n_warmup_steps=cfg.pruner.warmup_epochs)
    if cfg.pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.pruner.min_epochs, max_resource=cfg.epochs,
                                              reduction_factor=cfg.pruner.reduction_factor)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Prepared:
    train: Split
    valid: Split
    norm: Normalization
    sha256: str  # of train.pt, valid.pt, stats.json and the teacher together: what the study's trials learned from
    teacher: TeacherLogits | None = None  # the teacher's logits of the train split, when the searched block distills


def load_prepared(folder: Path, teacher: Path | None = None, device: torch.device = torch.device("cpu")) -> Prepared:
    """The prepared data, and the logits of the teacher checkpoint `teacher` when the searched block distills:
    computed here, once for all the trials of this process, by the function stage teacher_logits runs."""
    files = [folder / name for name in ("train.pt", "valid.pt", STATS_FILE)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise StudyError(f"{missing[0]} not found: the search trains on the pipeline's prepared data; "
                         "run `dvc repro prepare` first")
    if teacher is not None and not teacher.is_file():
        raise StudyError(f"{teacher} not found: the searched block distills (distill.alpha > 0) from that trained "
                         f"model; run `dvc repro train_teacher` first, or give --teacher another checkpoint")
    digest = hashlib.sha256(" ".join(file_sha256(f) for f in files + ([teacher] if teacher else [])).encode())
    train = load_split(folder, "train")
    logits = logits_of_checkpoint(teacher, train.images, device)[0] if teacher else None
    return Prepared(train, load_split(folder, "valid"), load_normalization(folder), digest.hexdigest(), logits)


def trial_settings(cfg: TuneConfig, number: int, device: str) -> dict[str, Any]:
    """The keys that trial `number` sets itself (TRIAL_SET): its epochs (tune.epochs, the study's budget), its
    seed (tune.seed + its number), one worker (parallelism comes from parallel trials) and the device its
    process resolved (`auto` on a GPU machine is not `auto` on a CPU one)."""
    value = {"epochs": cfg.epochs, "seed": cfg.seed + number, "workers": 1, "device": device}
    return {key: value[key] for key in TRIAL_SET}


def trial_block(base: Mapping[str, Any], values: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The training block of a trial: the base block with its sampled values and its own settings set."""
    return apply(apply(base, values), settings)


def open_study(name: str, storage: optuna.storages.BaseStorage, cfg: TuneConfig, model: str,
               base: Mapping[str, Any], data_sha256: str) -> optuna.Study:
    """Create the study, or continue it: a rerun of the same command adds trials to the same study."""
    sampler, pruner = make_sampler(cfg), make_pruner(cfg)
    try:  # loaded first: creating writes to the storage even when the study exists (a journal line per process)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                    sampler=sampler, pruner=pruner)
    fail_stale_trials(study)
    attrs = study.user_attrs
    if not attrs:
        study.set_user_attr(ATTR_MODEL, model)
        study.set_user_attr(ATTR_BASE, json.loads(json.dumps(base)))
        study.set_user_attr(ATTR_DATA, data_sha256)
        study.set_user_attr(ATTR_EPOCHS, cfg.epochs)
        return study
    if attrs.get(ATTR_MODEL) != model:
        raise StudyError(f"study {name!r} searches train_{attrs.get(ATTR_MODEL)}, not train_{model}: "
                         "name another study with --study")
    if attrs.get(ATTR_DATA) != data_sha256:
        raise StudyError(f"study {name!r} was run on other prepared data or another teacher (the seed or "
                         "valid_ratio changed, or the teacher was retrained?); its trials are not comparable with "
                         "new ones: name another study with --study")
    # The recipe, and the budget that every trial gets: the rest each trial sets itself (trial_settings).
    # A key left out of either block (the study's was recorded before `precision` existed) means its default.
    defaults = default_values(TrainConfig)
    changed = changed_keys({**defaults, **flatten(attrs.get(ATTR_BASE, {}))},
                           {**defaults, **flatten(json.loads(json.dumps(base)))}, SEARCHABLE)
    if changed:
        raise StudyError(f"study {name!r} was started from another train_{model} block ({'; '.join(changed[:3])}): "
                         "its trials are not comparable with new ones: name another study with --study")
    if ATTR_EPOCHS not in attrs:  # a study begun before the budget was recorded: it is this run's from now on
        study.set_user_attr(ATTR_EPOCHS, cfg.epochs)
    elif attrs[ATTR_EPOCHS] != cfg.epochs:
        raise StudyError(f"study {name!r} trains each trial up to {attrs[ATTR_EPOCHS]} epochs, and tune.epochs is "
                         f"now {cfg.epochs}: its trials are not comparable with new ones (nor pruned alike): set "
                         f"tune.epochs back to {attrs[ATTR_EPOCHS]}, or name another study with --study")
    return study


def owner() -> dict[str, Any]:
    """The trial attributes that name this process: its host, pid and start time (a pid alone also names a
    dead process not yet reaped, a zombie, and, later, an unrelated process that got the number again)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time()}


def process_ended(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        # the start time as psutil derives it from the boot time can move by a second when the clock is set
        return started is not None and abs(process.create_time() - started) > 1.0
    except psutil.NoSuchProcess:
        return True


def stale_trial_attr(number: int) -> str:
    """The study attribute that says why trial `number` was closed by another process than its own."""
    return f"trial {number} error"


def running_trials(study: optuna.Study, pids: list[int]) -> dict[int, list[int]]:
    """The numbers of the trials still running in each of these processes of this machine, by pid."""
    host, found = socket.gethostname(), {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and pid in pids:
            found.setdefault(pid, []).append(trial.number)
    return found


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Close the trials left running by a process of this machine that no longer exists (killed by SIGKILL,
    out of memory, a reboot): the journal file has no heartbeat, and a trial left running forever would count
    as running in every report. Trials of other machines are left to their own (a database's heartbeat)."""
    closed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != host or not isinstance(pid, int) or \
                not process_ended(pid, trial.user_attrs.get("pid_started")):
            continue
        # Optuna 5.1 has no public call that sets a user attribute on a trial this process did not start (only its
        # storage's private API does), so the reason goes to the study's own attributes.
        study.set_user_attr(stale_trial_attr(trial.number), f"its process ({pid}) ended without closing it")
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)  # another process may be closing it too
        closed.append(trial.number)
    return closed


class Objective:
    """One trial: sample, build and validate the block, train with pruning, return the selected epoch's
    validation accuracy (the figure the training stage writes as selected/valid_accuracy)."""

    def __init__(self, model: str, space: Space, base: Mapping[str, Any], cfg: TuneConfig, data: Prepared,
                 say: Callable[[str], None] = print):
        self.model, self.space, self.base, self.cfg, self.data, self.say = model, space, base, cfg, data, say
        self.device = resolve_device(build(TrainConfig, base, f"train_{model}").device).type

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("sampler_seed", sampler_seed(self.cfg, trial.number))  # what drew its values
        values = sample(trial, self.space)
        settings = trial_settings(self.cfg, trial.number, self.device)
        trial.set_user_attr(ATTR_SETTINGS, settings)  # what trained it, with its values: its command sets both
        trial.set_user_attr("seed", settings["seed"])  # for trials.csv
        block = trial_block(self.base, values, settings)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        try:
            train_cfg = build(TrainConfig, block, f"train_{self.model}")
        except ParamsError as exc:  # a sampled value the params checks refuse: a failed trial, the study goes on
            self.say(f"trial {trial.number}: failed: {exc}")
            trial.set_user_attr("error", str(exc))
            raise
        self.say(f"trial {trial.number}: start ({shown})")
        start = time.perf_counter()

        def on_epoch(record: EpochRecord) -> None:
            self.say(f"trial {trial.number}: epoch {record.epoch}/{train_cfg.epochs} valid accuracy "
                     f"{record.valid_accuracy:.4f} ({time.perf_counter() - start:.0f} s)")
            trial.report(record.valid_accuracy, record.epoch)
            trial.set_user_attr("epochs", record.epoch)
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            # after the last epoch there is nothing left to save: the trial finishes with its figure
            if record.epoch < train_cfg.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"valid accuracy {record.valid_accuracy:.4f} after epoch {record.epoch}")

        try:
            job = TrainingJob(train_cfg, self.data.train, self.data.valid, self.data.norm, settings["seed"],
                              Worker(device=resolve_device(train_cfg.device)), self.data.teacher)
            result = fit(job, on_epoch=on_epoch, log=lambda _: None)
        except optuna.TrialPruned as exc:
            self.say(f"trial {trial.number}: pruned: {exc}")
            raise
        except TrainingError as exc:  # diverged: a failed trial
            self.say(f"trial {trial.number}: failed: {exc}")
            trial.set_user_attr("error", str(exc))
            raise
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            # A failed trial, not a crash of the search: the next values (a smaller batch or model) may fit.
            error = f"out of memory: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]}"
            self.say(f"trial {trial.number}: failed: {error}")
            trial.set_user_attr("error", error)
            raise TrainingError(error) from None
        trial.set_user_attr("selected_epoch", result.selected_epoch)
        trial.set_user_attr("valid_loss", result.selected.valid_loss)
        value = result.selected.valid_accuracy
        self.say(f"trial {trial.number}: valid accuracy {value:.4f} (epoch {result.selected_epoch} of "
                 f"{len(result.history)}, {time.perf_counter() - start:.0f} s)")
        return value


def out_of_memory(exc: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; torch's CPU allocator a plain RuntimeError that says so
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_trials(study: optuna.Study, objective: Objective, trials: int | None = None,
               take: Callable[[], bool] | None = None) -> None:
    """Trials in this process: `trials` of them, or one each time `take()` grants one (a budget shared with
    other processes) until it refuses. A failed trial (refused params, divergence, out of memory) is logged and
    the study goes on; a stop (interrupts.py) ends it after Optuna has marked the running trial failed."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the objective says one line per event itself

    def owned(trial: optuna.Trial) -> float:
        for key, value in owner().items():  # which process owns it (fail_stale_trials)
            trial.set_user_attr(key, value)
        with interrupts.taken():
            return objective(trial)

    left = iter(range(trials or 0))
    take = take or (lambda: next(left, None) is not None)
    try:
        while not interrupts.requested() and take():
            # A stop waits while Optuna creates and closes the trial, and lands only in the objective, once the
            # trial names its process: study.optimize alone leaves a trial that a stop hits right after its
            # creation running with no owner, which no run can then tell from a live trial of another machine.
            with interrupts.deferred():
                study.optimize(owned, n_trials=1, catch=(ParamsError, TrainingError), gc_after_trial=True)
    except Exception:
        # A stop that lands inside the storage's own clean-up comes out as another error: Optuna's journal lock,
        # interrupted between unlinking its file and returning, unlinks it again (FileNotFoundError). Optuna has
        # closed the trial as failed by then; after a stop, that is the stop, not a crash.
        if not interrupts.requested():
            raise
        raise interrupts.interrupted() from None
    if interrupts.requested():  # a stop while Optuna closed the last trial: noted, not raised, until now
        raise interrupts.interrupted()


def threads_per_job(jobs: int, cpus: int) -> int:
    return max(1, cpus // jobs)


def set_threads(jobs: int, cpus: int) -> None:
    # Small recurrent matmuls scale poorly over threads: J parallel trials with cores/J threads each beat
    # one trial at a time with all of them (the reasoning of the training stage's workers).
    torch.set_num_threads(threads_per_job(jobs, cpus))

