"""fmnist-tune end to end on tiny synthetic data: shared studies (journal file, PostgreSQL), failed trials,
params errors before any trial, and a trial reproduced exactly by its `dvc exp run -S ...` command."""

import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import signal
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from conftest import VENV_BIN, deep_update, dvc, prepare_synthetic, run, train_project, write_params
from fmnist_seq.study import stale_trial_attr

pytestmark = pytest.mark.e2e
TUNE = str(VENV_BIN / "fmnist-tune")
# Small and quick: 2 epochs a trial, pruning from the second finished trial on.
FAST_TUNE = {"epochs": 2, "sampler": {"startup_trials": 2}, "pruner": {"startup_trials": 1, "warmup_epochs": 1}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("tune-data"), per_class_train=20)


def tune_project(folder: Path, **tune) -> Path:
    train_project(folder)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    deep_update(params["tune"], FAST_TUNE)
    spaces = tune.pop("spaces", None)
    deep_update(params["tune"], tune)
    if spaces is not None:  # replaced, not merged
        params["tune"]["spaces"] = spaces
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def tune(folder: Path, prepared: Path, *args: str) -> list[str]:
    return [TUNE, "--model", "gru", "--data", str(prepared), *args]


def journal(folder: Path) -> optuna.storages.BaseStorage:
    return optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / ".optuna" / "journal.log")))


@contextmanager
def no_trial_created(storage: str) -> Iterator[Callable[[], None]]:
    """While this holds, no process can create a trial in `storage` (reading the study goes on): the journal
    file's own write lock, or a lock on PostgreSQL's trials table. Yields what keeps the journal lock from
    looking abandoned: Optuna takes over a lock whose file has not changed for 30 s."""
    if "://" in storage:
        import psycopg
        with psycopg.connect(storage) as connection:  # one transaction: the lock holds until it ends
            connection.execute("LOCK TABLE trials IN EXCLUSIVE MODE")  # inserts wait, selects do not
            yield lambda: None
        return
    lock = optuna.storages.journal.JournalFileSymlinkLock(storage)
    lock.acquire()
    try:
        yield lambda: os.utime(storage)
    finally:
        lock.release()


def start_together(commands: list[list[str]], folders: list[Path], storage: str) -> list[subprocess.CompletedProcess]:
    """Start `commands` so that each has opened the study and counted its trials before any creates one (as two
    commands started at the same moment can), then let them run to the end."""
    run([*commands[0], "--trials", "0"], cwd=folders[0])  # the study exists first: creating it would wait too
    with no_trial_created(storage) as keep_alive:
        processes = [subprocess.Popen(c, cwd=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for c, f in zip(commands, folders)]
        first_lines = {}
        while len(first_lines) < len(processes):  # each prints its first line once it has counted the trials
            ready, _, _ = select.select([p.stdout for p in processes if p not in first_lines], [], [], 1.0)
            keep_alive()
            for process in processes:
                if process.stdout in ready:
                    first_lines[process] = process.stdout.readline()
                    assert first_lines[process], f"exited before its first line: {process.communicate()}"
    results = []
    for command, process in zip(commands, processes):
        out, err = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(command, process.returncode, first_lines[process] + out, err))
    for result in results:
        assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
        assert ": 0 trials so far;" in result.stdout.splitlines()[0]  # each counted none before it started
        assert result.stderr == "", result.stderr  # the program's own lines only (no library warnings)
    return results


# Every trial a random start-up one: its draw depends on its seed alone, not on how many trials had finished
# when it started (which, on tiny data, is a matter of timing)
RANDOM_DRAWS = {"sampler": {"startup_trials": 10}}


def check_six_trials(study: optuna.Study) -> None:
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))  # 6 distinct trials of one study
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    assert sorted(t.user_attrs["seed"] for t in trials) == [2026 + n for n in range(6)]  # seed + trial number
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(drawn)) == 6, drawn  # processes that started together drew different values


def test_two_processes_share_one_study_in_the_journal_file(prepared, tmp_path):
    """Two terminals, or two clones on one machine, on one journal file, started at the same moment."""
    folders = [tune_project(tmp_path / name, **RANDOM_DRAWS) for name in ("a", "b")]
    storage = str(tmp_path / "shared" / "journal.log")
    results = start_together([tune(f, prepared, "--trials", "3", "--storage", storage) for f in folders], folders,
                             storage)
    check_six_trials(optuna.load_study(study_name="gru", storage=optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage))))
    folder = folders[1]
    report = folder / "results" / "tune" / "gru"
    for name in ("optimization_history.png", "param_importances.png", "intermediate_values.png", "timeline.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = (report / "summary.md").read_text()
    assert "dvc exp run -n gru-trial-" in summary and "| rank | trial | valid acc |" in summary
    assert len((report / "trials.csv").read_text().splitlines()) == 7  # the header and every trial
    assert "retrain the best trial" in results[-1].stdout

    # A rerun of the same command continues the study (here: one more trial; of the two jobs, one finds the run's budget spent)
    again = run([*tune(folder, prepared, "--trials", "1", "--jobs", "2", "--storage", storage)], cwd=folder)
    assert "6 trials so far" in again.stdout
    assert len(optuna.load_study(study_name="gru", storage=optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage))).trials) == 7


def test_a_diverging_range_gives_failed_trials_and_the_study_goes_on(prepared, tmp_path):
    space = {"model": "gru", "params": {"lr": {"low": 1.0e8, "high": 1.0e10, "log": True},
                                        "model.dropout": {"low": 0.5, "high": 1.5}}}
    folder = tune_project(tmp_path / "proj", spaces={"gru": space})
    result = run(tune(folder, prepared, "--trials", "4"), cwd=folder)
    trials = optuna.load_study(study_name="gru", storage=journal(folder)).get_trials()
    assert len(trials) == 4
    assert all(t.state in (TrialState.FAIL, TrialState.PRUNED) for t in trials), [(t.state, t.params) for t in trials]
    errors = [t.user_attrs.get("error", "") for t in trials if t.state == TrialState.FAIL]
    assert errors and all("diverged" in e or "train_gru.model.dropout" in e for e in errors), errors
    assert "Traceback" not in result.stdout + result.stderr
    assert "0 finished" in result.stdout and "no finished trial yet" in result.stdout


@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "kill"])
def test_a_stopped_search_reports_what_it_found_and_leaves_no_job_behind(prepared, tmp_path, sig, to_group):
    """Ctrl-C in a terminal (SIGINT to the whole group), or `kill` of fmnist-tune alone (SIGTERM)."""
    folder = tune_project(tmp_path / "proj", epochs=4)
    # As a terminal starts a command: SIGINT at its default. A shell's background job (`make test &`, a CI
    # runner's) inherits SIGINT ignored, and Python then keeps ignoring it, as nohup'ed commands should.
    process = subprocess.Popen(tune(folder, prepared, "--trials", "200", "--jobs", "2"), cwd=folder,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until two trials have finished
            assert process.poll() is None, f"fmnist-tune ended ({process.returncode}): {process.communicate()}"
            time.sleep(1)
            log = folder / ".optuna" / "journal.log"
            if log.exists():
                done = optuna.load_study(study_name="gru", storage=journal(folder)).get_trials(
                    states=(TrialState.COMPLETE, TrialState.PRUNED))
                if len(done) >= 2:
                    break
        jobs = psutil.Process(process.pid).children(recursive=True)
        assert len([j for j in jobs if j.is_running()]) >= 2
        if to_group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + sig, err
    assert "interrupted: " in out and "| rank | trial | valid acc |" in out and "dvc exp run -n gru-trial-" in out
    assert (folder / "results/tune/gru/summary.md").is_file()
    # fmnist-tune waits for its jobs before it ends; multiprocessing's resource tracker ends after it
    _, alive = psutil.wait_procs(jobs, timeout=30)
    assert not [j for j in alive if j.status() != psutil.STATUS_ZOMBIE], alive  # no job trains on
    study = optuna.load_study(study_name="gru", storage=journal(folder))
    assert not study.get_trials(states=(TrialState.RUNNING,))  # the interrupted trials are closed (failed)
    assert "Traceback" not in err


# A trial process whose stop (SIGTERM, as fmnist-tune sends its jobs) lands right after Optuna's storage created
# its second trial, before the objective runs: the window that study.optimize leaves open.
STOP_AT_CREATION = """
import os, signal, sys
import optuna
from fmnist_seq import interrupts
from fmnist_seq.study import run_trials

interrupts.install()
study = optuna.create_study(study_name="s", direction="maximize", storage=optuna.storages.JournalStorage(
    optuna.storages.journal.JournalFileBackend(sys.argv[1])))
create = study._storage.create_new_trial
def create_then_stop(*args, **kwargs):
    trial_id = create(*args, **kwargs)
    if len(study.trials) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return trial_id
study._storage.create_new_trial = create_then_stop
try:
    run_trials(study, lambda trial: trial.suggest_float("x", 0.0, 1.0), trials=4)
except KeyboardInterrupt as exc:
    sys.exit(interrupts.exit_code(exc))
"""


def test_a_stop_as_optuna_creates_a_trial_closes_that_trial_under_its_owner(tmp_path):
    path = tmp_path / "journal.log"
    result = subprocess.run([sys.executable, "-c", STOP_AT_CREATION, str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "Traceback" not in result.stderr
    trials = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))).trials
    # the first trial finished; the second, stopped at its creation, is closed as failed (never left running), and
    # names its process like every trial; no third was started
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL], trials
    assert trials[1].user_attrs.get("pid") and trials[1].user_attrs.get("host") == socket.gethostname()


def test_trials_of_a_killed_search_are_closed_by_the_next_run(prepared, tmp_path):
    # A trial that ends only when the test lets it: no pruner, no early stopping, and each job frozen (SIGSTOP) as
    # soon as the storage shows it inside its trial. Two trials for two jobs: both are RUNNING when the search is
    # killed, on any machine. (Pruned 50-epoch trials let the search end before a poll saw both.)
    folder = tune_project(tmp_path / "proj", epochs=1000, pruner={"name": "none"})
    write_params(folder, {"train_gru": {"patience": 0}})
    process = subprocess.Popen(tune(folder, prepared, "--trials", "2", "--jobs", "2"), cwd=folder,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    frozen: set[int] = set()
    try:
        deadline = time.monotonic() + 300  # a safety net: each job starts its trial within seconds
        while len(frozen) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, f"fmnist-tune ended ({process.returncode}): {process.communicate()}"
            if (folder / ".optuna" / "journal.log").exists():
                for trial in optuna.load_study(study_name="gru", storage=journal(folder)).get_trials(
                        states=(TrialState.RUNNING,)):
                    pid = trial.user_attrs.get("pid")  # set first thing in the trial
                    if pid is not None and pid not in frozen:
                        os.kill(pid, signal.SIGSTOP)
                        frozen.add(pid)
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # nothing can close its trials: kill -9, out of memory
        process.wait()
    assert len(frozen) == 2
    # The jobs may linger as zombies (nobody reaps an orphan in some containers): ended all the same
    report = run(tune(folder, prepared, "--trials", "0"), cwd=folder)
    study = optuna.load_study(study_name="gru", storage=journal(folder))
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert all("ended without closing it" in study.user_attrs[stale_trial_attr(t.number)] for t in study.trials)
    assert "2 failed" in report.stdout and "running" not in report.stdout


# A stand-in for a trial's training, set before fmnist-tune runs; a spawned job runs this file first as well
STAND_IN = textwrap.dedent("""
    import os, signal, sys, time
    from fmnist_seq import study, tune_cli
    from fmnist_seq.errors import TrainingError

    def fit(*_args, **_kwargs):
        how = os.environ["TRIAL"]
        if how == "out-of-memory":  # what torch's CPU allocator raises
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        if how == "bug":
            raise ValueError("a bug in the training")
        if how == "deaf":  # stuck where no stop reaches it (a hung CUDA call, a lock): says so, then waits for good
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            open(f"stuck-{os.getpid()}", "w").close()
            while True:
                time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL if how == "killed" else signal.SIGTERM)  # `kill` of this job alone
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the stop must reach this loop
            pass
        raise TrainingError("the stop was lost")

    study.fit = fit
    tune_cli.STOP_TIMEOUT_S = float(os.environ.get("STOP_TIMEOUT_S", tune_cli.STOP_TIMEOUT_S))
    if __name__ == "__main__":
        tune_cli.main()
""")


@pytest.mark.parametrize("how", ["out-of-memory", "stopped", "killed", "bug"])
def test_what_becomes_of_a_job_its_search_reports(prepared, tmp_path, how):
    """A trial out of memory is a failed trial; a job stopped by itself stops the search; a job killed outright
    is an error; a bug is its traceback and an error, as with --jobs 1 (test_tune_cli.py). Each time: the report is
    written, every trial is closed, and no traceback but the bug's."""
    folder = tune_project(tmp_path / "proj")
    (folder / "tune.py").write_text(STAND_IN)
    result = run([sys.executable, "tune.py", "--model", "gru", "--data", str(prepared), "--trials", "3", "--jobs", "2"],
                 cwd=folder, check=False, env={**os.environ, "TRIAL": how})
    trials = optuna.load_study(study_name="gru", storage=journal(folder)).trials
    assert (folder / "results/tune/gru/summary.md").is_file()
    assert trials and all(t.state == TrialState.FAIL for t in trials), [t.state for t in trials]
    assert ("Traceback" in result.stderr) == (how == "bug"), result.stderr
    if how == "bug":
        assert result.returncode == 1 and "ValueError: a bug in the training" in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            "fmnist-tune: error: job-1 stopped with an error (above); job-2 stopped with an error (above); the study "
            "keeps every finished trial and the report is written")
    elif how == "out-of-memory":
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert len(trials) == 3 and all(t.user_attrs["error"].startswith("out of memory: ") for t in trials)
    elif how == "stopped":
        assert result.returncode == 128 + signal.SIGTERM and result.stderr == "", result.stderr  # the job's stop
        assert "interrupted: " in result.stdout
    else:
        assert result.returncode == 1
        assert result.stderr.strip() == ("fmnist-tune: error: job-1 was killed by SIGKILL (out of memory?); job-2 "
                                         "was killed by SIGKILL (out of memory?); the study keeps every finished "
                                         "trial and the report is written")


@pytest.mark.parametrize("again", [False, True], ids=["bounded-wait", "ctrl-c-again"])
def test_a_job_that_ignores_its_stop_is_killed_and_its_trial_named(prepared, tmp_path, again):
    """Ctrl-C while both jobs are stuck where no signal reaches them: fmnist-tune waits STOP_TIMEOUT_S (or until a
    second Ctrl-C), kills them, names each lost trial, closes it and writes the report; before, it waited for
    good. Set to 600 s, past this test's own limit, only the second Ctrl-C can end the wait."""
    folder = tune_project(tmp_path / "proj")
    (folder / "tune.py").write_text(STAND_IN)
    process = subprocess.Popen([sys.executable, "tune.py", "--model", "gru", "--data", str(prepared), "--trials", "2",
                                "--jobs", "2"], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               env={**os.environ, "TRIAL": "deaf", "STOP_TIMEOUT_S": "600" if again else "1"})
    try:
        while len(list(folder.glob("stuck-*"))) < 2:  # both jobs are inside their trial, deaf to any stop
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C
        if again:
            while not (line := process.stdout.readline()).startswith("stopping: waiting up to 600 s"):
                assert line, process.communicate()
            os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    trials = optuna.load_study(study_name="gru", storage=journal(folder)).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    when = "at the second stop" if again else "within 1 s"
    named = sorted(line.split("; its trial ")[1] for line in err.strip().splitlines())
    assert named == ["0 is lost (closed as failed)", "1 is lost (closed as failed)"], err
    assert all(line.startswith("fmnist-tune: job-") and f" did not stop {when}: killed; " in line
               for line in err.strip().splitlines()), err
    assert "interrupted: 2 trials: 0 finished, 0 pruned (0%), 2 failed" in out
    assert (folder / "results/tune/gru/summary.md").is_file()


# --- PostgreSQL: one study shared by processes that could be on different machines ---------------------

def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of the test's own on a loopback port (run as the `postgres` user under root)."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server not installed: apt-get install postgresql (make setup does it as root)")
    pytest.importorskip("psycopg", reason="psycopg not installed (requirements.txt)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))  # outside pytest's root-only tmp folders
    if as_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)
    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
           f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_two_processes_share_one_study_in_postgresql(prepared, tmp_path, postgres_url):
    folders = [tune_project(tmp_path / name, **RANDOM_DRAWS) for name in ("a", "b")]  # two clones, two machines
    # one process with two jobs of its own, one with one: three trial processes, started at the same moment
    start_together([tune(folders[0], prepared, "--trials", "3", "--jobs", "2", "--storage", postgres_url),
                    tune(folders[1], prepared, "--trials", "3", "--storage", postgres_url)], folders, postgres_url)
    check_six_trials(optuna.load_study(study_name="gru", storage=postgres_url))  # read by a third process
    shown = run(tune(folders[1], prepared, "--trials", "0", "--storage", postgres_url), cwd=folders[1])
    assert "6 trials so far" in shown.stdout and "| 1 |" in shown.stdout and shown.stderr == ""
    assert not any((f / ".optuna").exists() for f in folders)  # nothing went to the default journal file


# --- a trial comes back into DVC as an experiment, with the same validation accuracy ------------------------

def test_the_printed_command_retrains_a_trial_exactly_and_queue_best_queues(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    deep_update(params["tune"], {**FAST_TUNE, "pruner": {"name": "none"}})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", "prepare", cwd=project)
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", "prepared"], cwd=project)
    found = run([TUNE, "--model", "gru", "--trials", "2", "--queue-best", "2"], cwd=project).stdout
    assert "queued 2 experiment(s)" in found
    queued = dvc("queue", "status", cwd=project).stdout
    assert queued.count("Queued") == 2, queued
    dvc("queue", "remove", "--all", cwd=project)

    study = optuna.load_study(study_name="gru", storage=journal(project))
    command = next(line.strip() for line in found.splitlines() if line.strip().startswith("dvc exp run -n"))
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert f"-n gru-trial-{best.number}" in command and f"train_gru.seed={best.user_attrs['seed']}" in command
    dvc(*shlex.split(command)[1:], cwd=project)
    metrics = json.loads((project / "results/train/gru/metrics.json").read_text())
    assert metrics["selected"]["valid_accuracy"] == best.value  # the same figure, to the last bit
    assert metrics["selected"]["epoch"] == best.user_attrs["selected_epoch"]
    shown = json.loads(dvc("exp", "show", "--json", cwd=project).stdout)
    names = {exp.get("name") for rev in shown for exp in (rev.get("experiments") or [])}
    assert f"gru-trial-{best.number}" in names
