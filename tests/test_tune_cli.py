"""fmnist-tune's command line, in process: every mistake stops before any trial with one line naming it."""

import dataclasses
import multiprocessing
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings

import matplotlib.pyplot as plt
import optuna
import psutil
import pytest
import torch
import yaml
from optuna.trial import TrialState

from conftest import FAST_PARAMS, ROOT, deep_update, prepare_synthetic, train_project
from fmnist_seq import distributed, interrupts, study, tune_cli
from fmnist_seq.checkpoint import checkpoint_sha256, save_checkpoint
from fmnist_seq.config import PER_RUN, PLACEMENT, RECIPE, ModelConfig, TrainConfig, build, keys_with_role
from fmnist_seq.data import load_split
from fmnist_seq.models import build_model
from fmnist_seq.errors import TrainingError
from fmnist_seq.search_space import apply, load_tune, sample
from fmnist_seq.snapshot import RunKey
from fmnist_seq.study import fail_stale_trials, open_storage, open_study, run_trials, sampler_seed
from fmnist_seq.tune_report import exp_args, tidy, yaml_value


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_synthetic(tmp_path_factory.mktemp("tune-cli-data"), per_class_train=10)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    train_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)  # a trial run in process sets this process's threads


@pytest.fixture(autouse=True)
def job_in_this_process(own_stop_handling, monkeypatch):
    """fmnist-tune's main() and its jobs install this process's stop handling (own_stop_handling gives pytest's
    back); a job run here wraps stderr and must not tie itself to pytest's parent."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.setattr(distributed, "die_with_launcher", lambda: None)


def set_space(folder, space: dict) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["tune"]["spaces"] = {"gru": {"model": "gru", "params": space}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def fails(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(list(args))
    err = capsys.readouterr().err
    assert exited.value.code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("space, message", [
    ({"learning_rate": {"low": 0.001, "high": 0.01}}, "tune.spaces.gru.params.learning_rate names 'learning_rate'"),
    ({"lr": {"low": 0.01, "high": 0.001}}, "tune.spaces.gru.params.lr is an empty range"),
    ({"lr": {"low": 0.001, "high": 0.01, "scale": "log"}}, "unknown key tune.spaces.gru.params.lr.scale"),
])
def test_a_bad_tune_block_stops_before_any_trial(folder, prepared, capsys, space, message):
    set_space(folder, space)
    err = fails(capsys, "--model", "gru", "--data", str(prepared), "--trials", "2")
    assert message in err
    assert not (folder / ".optuna").exists()  # no study was created, no trial ran


def test_usage_errors_are_one_line(folder, prepared, capsys):
    data = ["--model", "gru", "--data", str(prepared)]
    assert "dvc repro prepare" in fails(capsys, "--model", "gru", "--data", str(folder / "nowhere"))
    assert "SQLite cannot serve 2" in fails(capsys, *data, "--storage", f"sqlite:///{folder}/s.db", "--jobs", "2")
    err = fails(capsys, *data, "--storage", "postgresql://u:secret@127.0.0.1:1/none")
    assert "cannot open the study storage postgresql://u:***@127.0.0.1:1/none" in err  # never the password
    assert "tune.spaces has no 'nope'" in fails(capsys, *data, "--space", "nope")
    assert "searches train_rnn, not train_gru" in fails(capsys, *data, "--space", "rnn")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["train_gru"]["lr"] = -1
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    assert "train_gru.lr = -1" in fails(capsys, *data)  # the base block is checked before any trial
    with pytest.raises(SystemExit) as exited:
        tune_cli.main([*data, "--jobs", "zero"])
    assert exited.value.code == 2 and "not a number of jobs" in capsys.readouterr().err
    assert not (folder / ".optuna").exists()


def test_a_continued_study_must_search_the_same_block_on_the_same_data(folder, prepared, capsys):
    params = yaml.safe_load((folder / "params.yaml").read_text())
    deep_update(params["tune"], {"epochs": 1})
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(["--model", "gru", "--data", str(prepared), "--trials", "1"])
    assert exited.value.code == 0
    params["train_gru"]["lr"] = 0.02
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    err = fails(capsys, "--model", "gru", "--data", str(prepared), "--trials", "1")
    assert "study 'gru' was started from another train_gru block (lr: 0.01 -> 0.02)" in err
    # Another budget: the study's trials trained 1 epoch at most, a new one would train 2 (and be pruned otherwise)
    params["train_gru"]["lr"] = 0.01
    params["tune"]["epochs"] = 2
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    err = fails(capsys, "--model", "gru", "--data", str(prepared), "--trials", "0")
    assert "study 'gru' trains each trial up to 1 epochs, and tune.epochs is now 2" in err


def test_the_command_sets_every_value_the_trial_used():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("model", "gru")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                       "model.bidirectional": optuna.distributions.CategoricalDistribution([False, True])})
    trial.set_user_attr("settings", {"epochs": 6, "seed": 2031, "workers": 1, "device": "cpu"})
    study.tell(trial, 0.9)
    args = exp_args(study, study.trials[0])
    settings = dict(a.split("=", 1) for a in args[1::2])
    assert float(settings["train_gru.lr"]) == study.trials[0].params["lr"]  # the exact float, by repr
    assert settings["train_gru.model.bidirectional"] in ("true", "false")
    assert [settings[f"train_gru.{key}"] for key in ("epochs", "seed", "workers", "device")] == ["6", "2031", "1", "cpu"]
    assert [yaml_value(v) for v in (True, 1e-05, 128, "max_steps")] == ["true", "1e-05", "128", "max_steps"]


def test_a_trial_sets_every_key_config_declares_per_run_or_placement_and_the_run_key_holds_them():
    """One declaration (config.py's roles) decides what a trial sets itself, what its command sets and what the
    training stage's run key holds resolved: a key added there cannot be left out of one of them."""
    cfg = load_tune(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert set(study.trial_settings(cfg, 3, "cpu")) == set(keys_with_role(TrainConfig, PER_RUN, PLACEMENT))
    resolved = {f.name for f in dataclasses.fields(RunKey)}
    assert set(keys_with_role(TrainConfig, PLACEMENT)) <= resolved  # device, workers: as they resolved
    assert set(keys_with_role(TrainConfig, PER_RUN)) <= set(keys_with_role(TrainConfig, RECIPE, PER_RUN))  # in params


def test_the_printed_command_trains_what_the_trial_trained(folder, prepared, capsys, monkeypatch):
    """The command set tune.epochs and workers only where the study's first block differed, so a block edited
    since (epochs, workers: neither is the study's identity) retrained another model. Now it sets every key the
    trial set itself, as the trial recorded it: applied to today's block, it builds the trial's own config."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    deep_update(params, {"tune": {"epochs": 1}, "train_gru": {"epochs": 1, "workers": 1}})
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    trained = []
    real_fit = study.fit

    def spy(job, **kwargs):
        trained.append(job.cfg)
        return real_fit(job, **kwargs)
    monkeypatch.setattr(study, "fit", spy)
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(["--model", "gru", "--data", str(prepared), "--trials", "1"])
    assert exited.value.code == 0
    capsys.readouterr()
    deep_update(params, {"train_gru": {"epochs": 3, "workers": 2}})  # edited after the search
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(["--model", "gru", "--data", str(prepared), "--trials", "0"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("dvc exp run -n"))
    assert command in (folder / "results/tune/gru/summary.md").read_text()
    block = params["train_gru"]
    for setting in shlex.split(command)[6::2]:  # each -S block.key=value, its value read as DVC reads YAML
        key, value = setting.split("=", 1)
        block = apply(block, {key.removeprefix("train_gru."): yaml.safe_load(value)})
    assert build(TrainConfig, block, "train_gru") == trained[0]  # every key, recipe and settings


def test_jobs_draw_trials_from_one_pool_so_a_fast_job_takes_the_slack():
    # Two jobs on one study and one budget of 8 trials. The slow job's first trial lasts until the fast job has
    # run out of trials: the fast one must run the other 7 (fixed shares of 4 each left it idle while the
    # slow one still had a queue, the waste seen in a real architecture study).
    study = optuna.create_study(direction="maximize")
    tickets = threading.Semaphore(8)
    ran = {"slow": 0, "fast": 0}
    slow_started, fast_done = threading.Event(), threading.Event()

    def slow(trial):
        ran["slow"] += 1
        slow_started.set()
        fast_done.wait(timeout=60)
        return 0.5

    def fast(trial):
        ran["fast"] += 1
        return 0.5

    def fast_job():
        run_trials(study, fast, take=lambda: tickets.acquire(blocking=False))
        fast_done.set()

    slow_job = threading.Thread(target=run_trials, args=(study, slow),
                                kwargs={"take": lambda: tickets.acquire(blocking=False)})
    slow_job.start()
    assert slow_started.wait(timeout=60)
    fast_job()
    slow_job.join()
    assert ran == {"slow": 1, "fast": 7}
    assert len(study.trials) == 8  # the run's budget, exactly


@pytest.mark.parametrize("trials, legend", [(3, True), (13, False)])
def test_the_per_epoch_picture_drops_a_legend_too_long_to_fit(trials, legend):
    study = optuna.create_study(direction="maximize")
    for n in range(trials):
        trial = study.ask()
        for epoch in range(3):
            trial.report(0.5 + 0.01 * (n + epoch), epoch + 1)
        study.tell(trial, 0.5 + 0.01 * n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib backend is marked experimental
        axes = optuna.visualization.matplotlib.plot_intermediate_values(study)
    tidy(axes, "intermediate_values.png", trials)
    assert (axes.get_legend() is not None) == legend
    assert ("short lines pruned" in axes.get_title()) != legend
    plt.close(axes.figure)


@pytest.mark.parametrize("stopped", [True, False], ids=["after-a-stop", "no-stop"])
def test_an_error_out_of_the_storage_after_a_stop_is_the_stop(folder, prepared, capsys, monkeypatch, stopped):
    """Ctrl-C in Optuna's journal-file lock release came out as FileNotFoundError (fresh-clone CI): after a stop
    that is exit 130 without a traceback; without one, the error still surfaces."""
    def trial_in_the_lock(*_args, **_kwargs):
        if stopped:  # the handler noted the stop; its exception died in the lock's clean-up
            interrupts.interrupted(signal.SIGINT)
        raise FileNotFoundError("journal.log.lock...rename")

    monkeypatch.setattr(study, "fit", trial_in_the_lock)
    search, _ = tune_cli.plan(tune_cli.parser().parse_args(["--model", "gru", "--data", str(prepared)]))
    if stopped:
        with pytest.raises(SystemExit) as stop:
            tune_cli._job(0, search, multiprocessing.Semaphore(2))
        assert stop.value.code == 130
    else:  # the job's traceback, and its exit code for fmnist-tune's report
        with pytest.raises(SystemExit) as error:
            tune_cli._job(0, search, multiprocessing.Semaphore(2))
        assert error.value.code == 1 and "FileNotFoundError: journal.log.lock" in capsys.readouterr().err


# --- stops: Ctrl-C (SIGINT), `kill` (SIGTERM), and either one landing in a destructor -----------------------

class _StopInDestructor:
    """Like tqdm's progress bar: its destructor runs whenever the collector gets to it, here with a signal."""

    def __init__(self, sig: signal.Signals):
        self.sig = sig

    def __del__(self):
        signal.raise_signal(self.sig)  # the signal's handler runs inside this destructor
        sum(range(1000))


def stopping_fit(sig: signal.Signals, where: str):
    """A trial's training that receives `sig` (in a destructor, or plainly), then runs until the stop reaches it."""
    def fit(*_args, **_kwargs):
        if where == "destructor":
            _StopInDestructor(sig)  # gone at once
        else:
            signal.raise_signal(sig)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the stop must reach this loop, not be lost in the destructor
            pass
        raise TrainingError("the stop was lost")
    return fit


STOPS = pytest.mark.parametrize("sig, where", [(signal.SIGINT, "signal"), (signal.SIGTERM, "signal"),
                                               (signal.SIGINT, "destructor"), (signal.SIGTERM, "destructor")],
                                ids=["ctrl-c", "kill", "ctrl-c-in-a-destructor", "kill-in-a-destructor"])


def journal_study(folder) -> optuna.Study:
    return optuna.load_study(study_name="gru", storage=open_storage(str(folder / ".optuna" / "journal.log")))


@STOPS
def test_a_stopped_search_in_one_process_closes_its_trial_and_writes_the_report(folder, prepared, capsys, monkeypatch,
                                                                              sig, where):
    """fmnist-tune --jobs 1 runs its trials in its own process: a stop there is the stop of the search."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts it, whatever started pytest
    monkeypatch.setattr(study, "fit", stopping_fit(sig, where))
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(["--model", "gru", "--data", str(prepared), "--trials", "2"])
    out, err = capsys.readouterr()
    assert exited.value.code == 128 + sig, err  # as the stages exit: 130 for Ctrl-C, 143 for SIGTERM
    assert err == "" and "interrupted: 1 trials: 0 finished, 0 pruned (0%), 1 failed" in out, out + err
    assert (folder / "results/tune/gru/summary.md").is_file()
    assert [t.state for t in journal_study(folder).trials] == [TrialState.FAIL]  # and no second trial


@STOPS
def test_a_stopped_job_closes_its_trial_and_exits_128_plus_the_signal(folder, prepared, capsys, monkeypatch, sig,
                                                                     where):
    """One of fmnist-tune --jobs N's trial processes (run here in this process: the code a spawned job runs)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(study, "fit", stopping_fit(sig, where))
    search, _ = tune_cli.plan(tune_cli.parser().parse_args(["--model", "gru", "--data", str(prepared)]))
    with pytest.raises(SystemExit) as exited:
        tune_cli._job(0, search, multiprocessing.Semaphore(2))
    err = capsys.readouterr().err
    assert exited.value.code == 128 + sig, err
    assert err == ""
    assert [t.state for t in journal_study(folder).trials] == [TrialState.FAIL]


# --- fmnist-tune's own failures: one line, the right exit code, the study kept ------------------------------

def test_an_unwritable_storage_or_report_folder_is_one_line(folder, prepared, capsys, monkeypatch):
    data = ["--model", "gru", "--data", str(prepared)]
    params = yaml.safe_load((folder / "params.yaml").read_text())
    deep_update(params["tune"], {"epochs": 1})
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "a-file").write_text("")  # a folder cannot be made below it, whoever runs the test (root too)
    err = fails(capsys, *data, "--storage", str(folder / "a-file" / "journal.log"))
    assert f"cannot open the journal file {folder}/a-file/journal.log" in err and "give --storage" in err
    err = fails(capsys, *data, "--trials", "0", "--out", str(folder / "a-file" / "tune"))
    assert f"cannot write the report to {folder}/a-file/tune/gru" in err  # before any trial

    # A folder that stops being writable during the search: the report's error, the study's trials kept
    def no_space(*_args, **_kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tune_cli, "write_results", no_space)
    err = fails(capsys, *data, "--trials", "1")
    assert "cannot write the report to results/tune/gru: No space left on device; the study keeps its" in err
    assert [t.state for t in journal_study(folder).trials] == [TrialState.COMPLETE]


def test_a_trial_out_of_memory_fails_and_the_search_goes_on(folder, prepared, capsys, monkeypatch):
    def out_of_memory(*_args, **_kwargs):  # what torch's CPU allocator raises
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 100000000000000 bytes. Error code 12")
    monkeypatch.setattr(study, "fit", out_of_memory)
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(["--model", "gru", "--data", str(prepared), "--trials", "2"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert err == "" and out.count("failed: out of memory: [enforce fail") == 2, out
    assert "2 trials: 0 finished, 0 pruned (0%), 2 failed" in out and (folder / "results/tune/gru/trials.csv").is_file()
    trials = journal_study(folder).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["error"].startswith("out of memory: ") for t in trials)


def test_an_unexpected_error_ends_a_search_in_one_process_as_it_ends_a_job(folder, prepared, capsys, monkeypatch):
    """A bug or a CUDA error in a trial of --jobs 1 escaped as a bare traceback, without the report; a job of
    --jobs N prints its traceback and fmnist-tune reports (tests/test_tune.py, "bug"). Now both do the same."""
    def bug(*_args, **_kwargs):
        raise ValueError("a bug in the training")
    monkeypatch.setattr(study, "fit", bug)
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(["--model", "gru", "--data", str(prepared), "--trials", "2"])
    out, err = capsys.readouterr()
    assert exited.value.code == 1, err
    assert "Traceback" in err and "ValueError: a bug in the training" in err
    assert err.strip().splitlines()[-1] == ("fmnist-tune: error: the search stopped with an error (above); the study "
                                            "keeps every finished trial and the report is written")
    assert "1 trials: 0 finished, 0 pruned (0%), 1 failed" in out and (folder / "results/tune/gru/summary.md").is_file()
    assert [t.state for t in journal_study(folder).trials] == [TrialState.FAIL]  # and no second trial


def test_a_database_storage_prints_no_warning_of_optuna(tmp_path):
    """heartbeat_interval is experimental in Optuna: its warning came before every process's first line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_storage(f"sqlite:///{tmp_path}/study.db")
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)], caught


# --- processes that share a study --------------------------------------------------------------------------

def test_processes_that_open_a_study_together_draw_different_trials(tmp_path):
    """Two fmnist-tune commands started together both counted 0 trials and seeded their samplers alike, so they
    trained the same start-up trials. Each trial now samples with its own seed, recorded on the trial."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = load_tune(params)
    space = cfg.spaces["gru"]
    storage = open_storage(str(tmp_path / "journal.log"))
    a, b = (open_study("gru", storage, cfg, "gru", params["train_gru"], "data") for _ in range(2))  # nothing run yet
    drawn = []
    for process in (a, b, a, b):
        trial = process.ask()
        drawn.append(sample(trial, space))
        process.tell(trial, 0.5)
    assert len({tuple(sorted(d.items())) for d in drawn}) == 4, drawn

    # A start-up (random) trial's values follow from its number's seed alone, whichever process drew them
    again = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sampler_seed(cfg, 3)))
    assert sample(again.ask(), space) == drawn[3]


def test_a_trial_whose_process_is_a_zombie_or_another_is_closed(tmp_path):
    """After a SIGKILL the next run left a trial RUNNING: its job, a zombie not yet reaped, still had a pid. A pid
    that an unrelated process got again is the same case."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # ended, not reaped: this test waits on it
        time.sleep(0.01)
    killed = optuna.create_study(storage=open_storage(str(tmp_path / "journal.log")))
    trials = [killed.ask() for _ in range(3)]
    owners = [{"pid": child.pid, "pid_started": psutil.Process(child.pid).create_time()},  # a zombie
              {"pid": psutil.Process().pid, "pid_started": psutil.Process().create_time() - 3600},  # pid reused
              {"pid": psutil.Process().pid, "pid_started": psutil.Process().create_time()}]  # alive: this process
    for trial, owner in zip(trials, owners):
        trial.set_user_attr("host", study.owner()["host"])
        for key, value in owner.items():
            trial.set_user_attr(key, value)
    try:
        assert fail_stale_trials(killed) == [0, 1]
    finally:
        child.wait()
    assert [t.state for t in killed.trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]
    assert "its process" in killed.user_attrs[study.stale_trial_attr(0)]


def test_a_distilling_block_is_searched_with_its_teacher(folder, prepared, capsys, monkeypatch):
    """train_lstm distills from models/teacher.pt's logits: fmnist-tune finds the teacher there (or at --teacher), says
    how to make it when it is missing, gives its logits (computed once, as stage teacher_logits does) to every
    trial, and refuses a teacher that no trial would learn from."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    deep_update(params, {"train_lstm": FAST_PARAMS["train_lstm"], "tune": {"epochs": 1}})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lstm = ["--model", "lstm", "--data", str(prepared), "--trials", "1"]
    err = fails(capsys, *lstm)
    assert "models/teacher.pt not found" in err and "dvc repro train_teacher" in err
    assert not (folder / ".optuna").exists()
    assert "no trial would learn from a teacher; drop --teacher" in fails(
        capsys, "--model", "gru", "--data", str(prepared), "--teacher", "models/teacher.pt")

    teacher_cfg = ModelConfig(cell="cnn", hidden_size=4, num_layers=2, head="all_steps", head_hidden=16)
    (folder / "models").mkdir()
    save_checkpoint(folder / "models" / "teacher.pt", build_model(teacher_cfg, 0.0, 1.0), {}, 1, {}, [])
    taught = []
    real_fit = study.fit

    def spy(job, **kwargs):
        taught.append(job.teacher)
        return real_fit(job, **kwargs)
    monkeypatch.setattr(study, "fit", spy)
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(lstm)
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert len(taught) == 1 and taught[0] is not None and taught[0].cell == "cnn"
    assert taught[0].teacher_sha256 == checkpoint_sha256(folder / "models" / "teacher.pt")
    assert taught[0].count == len(load_split(prepared, "train"))
    trials = optuna.load_study(study_name="lstm", storage=open_storage(str(folder / ".optuna" / "journal.log"))).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    assert "dvc exp run -n lstm-trial-0" in out  # the pipeline's train_lstm learns from this teacher too

    # Another teacher: `dvc exp run` would train with models/teacher.pt, so no command is printed or queued
    save_checkpoint(folder / "other.pt", build_model(teacher_cfg, 0.5, 2.0), {}, 1, {}, [])
    other = [*lstm, "--teacher", "other.pt", "--study", "lstm-other"]
    with pytest.raises(SystemExit) as exited:
        tune_cli.main(other)
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert "dvc exp run" not in out.replace("no `dvc exp run` retrains", "")
    assert ("no `dvc exp run` retrains these trials exactly: they learned from other.pt, and the pipeline's "
            "train_lstm learns from models/teacher.pt (dvc.yaml), another checkpoint") in out
    assert "No `dvc exp run` retrains" in (folder / "results/tune/lstm-other/summary.md").read_text()
    assert "--queue-best: they learned from other.pt" in fails(
        capsys, "--model", "lstm", "--data", str(prepared), "--trials", "0", "--teacher", "other.pt", "--study",
        "lstm-other", "--queue-best", "1")
    # The same bytes under another name: the same teacher, the command is exact
    (folder / "same.pt").write_bytes((folder / "models" / "teacher.pt").read_bytes())
    with pytest.raises(SystemExit) as exited:
        tune_cli.main([*lstm[:-1], "0", "--teacher", "same.pt"])
    assert exited.value.code == 0 and "dvc exp run -n lstm-trial-0" in capsys.readouterr().out


def test_precision_is_the_studys_identity_and_a_study_recorded_before_it_continues_in_fp32():
    """precision is recipe: a study over a block inherits it, and a block since switched to bf16 is another study
    (its trials would not compare, and the printed command applies today's block). A study recorded before the key
    existed trained in fp32: it continues under fp32 and only then."""
    cfg = load_tune(yaml.safe_load((ROOT / "params.yaml").read_text()))
    base = yaml.safe_load((ROOT / "params.yaml").read_text())["train_gru"]
    assert "precision" in study.SEARCHABLE and "precision" not in study.TRIAL_SET
    storage = optuna.storages.InMemoryStorage()
    open_study("old", storage, cfg, "gru", {k: v for k, v in base.items() if k != "precision"}, "data")
    open_study("old", storage, cfg, "gru", {**base, "precision": "fp32"}, "data")
    with pytest.raises(study.StudyError, match=r"another train_gru block \(precision: 'fp32' -> 'bf16'\)"):
        open_study("old", storage, cfg, "gru", {**base, "precision": "bf16"}, "data")
    open_study("bf16", storage, cfg, "gru", {**base, "precision": "bf16"}, "data")
    with pytest.raises(study.StudyError, match=r"precision: 'bf16' -> 'fp32'"):
        open_study("bf16", storage, cfg, "gru", {**base, "precision": "fp32"}, "data")
