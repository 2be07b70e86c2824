"""Training survives interruption, through the real stage script with real processes and real signals: a killed
run resumes from its last finished epoch and ends byte for byte where an uninterrupted run ends; a dead worker
is restarted; workers never outlive their launcher; Ctrl-C says in one line what was kept."""

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import prepare_synthetic, train_command, train_project, train_stage, workers_of
from fmnist_seq.snapshot import DEFAULT_FOLDER, SNAPSHOTS_ENV

pytestmark = pytest.mark.e2e

# Epochs of about a second on two cores: long enough to land a signal inside one.
RUN = {"epochs": 5, "patience": 0, "batch_size": 16, "max_restarts": 1}
OUTPUTS = ("gru.pt", "timings.json")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("resume"), per_class_train=100)


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """Uninterrupted runs, by worker count: what every interrupted run must end up as."""
    folders = {}
    for workers in (1, 2):
        folder = train_project(tmp_path_factory.mktemp(f"reference{workers}"), workers=workers, **RUN)
        result = train_stage(folder, prepared)
        assert result.returncode == 0, result.stderr
        folders[workers] = folder
    return folders


class Stage:
    """The training stage as a process group of its own, as `dvc repro` starts it; stdout read line by line."""

    def __init__(self, folder: Path, data: Path):
        env = {k: v for k, v in os.environ.items() if k != SNAPSHOTS_ENV}
        self.stderr_path = folder.parent / f"{folder.name}.stderr"
        self.process = subprocess.Popen(train_command(folder, data), cwd=folder, stdout=subprocess.PIPE,
                                        stderr=self.stderr_path.open("w"), text=True, start_new_session=True,
                                        env={**env, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            self.stdout.append(line)
            if text in line:
                return
        self.process.kill()
        raise AssertionError(f"no {text!r} in the stage's output: {''.join(self.stdout)}")

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.2)
        while not self.lines.empty():
            self.stdout.append(self.lines.get())
        return code, "".join(self.stdout), self.stderr_path.read_text()


def snapshots_in(folder: Path) -> list[Path]:
    return sorted((folder / DEFAULT_FOLDER).glob("train_gru-*.pt"))


def assert_same_outputs(folder: Path, reference: Path) -> None:
    assert (folder / "gru.pt").read_bytes() == (reference / "gru.pt").read_bytes()  # weights, history, everything
    assert (folder / "live/metrics.json").read_text() == (reference / "live/metrics.json").read_text()
    for series in ("train/loss.tsv", "valid/loss.tsv", "valid/accuracy.tsv", "mean_lr.tsv"):  # curves from step 1
        assert (folder / "live/plots/metrics" / series).read_text() == \
            (reference / "live/plots/metrics" / series).read_text(), series


def resume(folder: Path, data: Path, at_epoch: int) -> str:
    result = train_stage(folder, data)
    assert result.returncode == 0, result.stderr
    assert f"train_gru: resuming at epoch {at_epoch} of 5 from " in result.stdout, result.stdout
    assert snapshots_in(folder) == [] and not (folder / DEFAULT_FOLDER).exists()  # nothing left behind
    return result.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_of_the_stage_during_epoch_3_resumes_at_epoch_3_byte_for_byte(prepared, reference, tmp_path, workers):
    folder = train_project(tmp_path / "run", workers=workers, **RUN)
    stage = Stage(folder, prepared)
    stage.wait_for("epoch   2/5")  # printed once epoch 2 is saved: the kill lands in epoch 3
    workers_before = workers_of(psutil.Process(stage.process.pid))
    assert len(workers_before) == (2 if workers == 2 else 0)
    os.killpg(stage.process.pid, signal.SIGKILL)  # `kill -9 -PGID`: the launcher, not its workers' own sessions
    code, _, _ = stage.finish()
    assert code == -signal.SIGKILL
    # The workers die with their launcher and write nothing.
    live_before = {p: p.stat().st_mtime_ns for p in (folder / "live").rglob("*")}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                                              for w in workers_before.values()):
        time.sleep(0.2)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers_before.values())
    time.sleep(1)
    assert not any((folder / name).exists() for name in OUTPUTS)
    assert {p: p.stat().st_mtime_ns for p in (folder / "live").rglob("*")} == live_before
    assert len(snapshots_in(folder)) == 1

    resume(folder, prepared, at_epoch=3)
    assert_same_outputs(folder, reference[workers])


def test_a_killed_worker_is_restarted_and_the_run_completes_by_itself(prepared, reference, tmp_path):
    folder = train_project(tmp_path / "run", workers=2, **RUN)
    stage = Stage(folder, prepared)
    stage.wait_for("epoch   1/5")
    workers_of(psutil.Process(stage.process.pid))[1].send_signal(signal.SIGKILL)  # during epoch 2
    code, stdout, stderr = stage.finish()
    assert code == 0, stderr
    assert "train_gru: resuming at epoch 2 of 5 from " in stdout and "restart 1 of 1 after a worker failed" in stdout
    assert "Traceback" not in stderr
    assert_same_outputs(folder, reference[2])
    assert snapshots_in(folder) == []


@pytest.mark.parametrize("workers, sig", [(2, signal.SIGINT), (1, signal.SIGTERM)], ids=["sigint-2", "sigterm-1"])
def test_an_interrupt_says_what_was_kept_in_one_line_and_a_rerun_resumes(prepared, reference, tmp_path, workers, sig):
    folder = train_project(tmp_path / "run", workers=workers, **RUN)
    stage = Stage(folder, prepared)
    stage.wait_for("epoch   2/5")
    os.killpg(stage.process.pid, sig)  # Ctrl-C at a terminal signals the whole foreground process group
    code, _, stderr = stage.finish(timeout=60)
    assert code == 128 + sig.value
    (snapshot,) = snapshots_in(folder)
    assert stderr.strip().splitlines() == [
        f"train_gru: interrupted by {sig.name}; epochs 1-2 are saved in {snapshot}: `dvc repro` resumes at epoch 3; "
        "its outputs were removed"], stderr
    assert not any((folder / name).exists() for name in (*OUTPUTS, "live"))

    resume(folder, prepared, at_epoch=3)
    assert_same_outputs(folder, reference[workers])


def test_a_run_with_other_params_starts_afresh_and_says_why(prepared, tmp_path):
    folder = train_project(tmp_path / "run", workers=1, **RUN)
    stage = Stage(folder, prepared)
    stage.wait_for("epoch   1/5")
    os.killpg(stage.process.pid, signal.SIGKILL)
    stage.finish()
    (stale,) = snapshots_in(folder)
    train_project(folder, workers=1, **{**RUN, "lr": 0.02})
    result = train_stage(folder, prepared)
    assert result.returncode == 0, result.stderr
    assert f"train_gru: not resuming {stale}: train_gru.lr: 0.01 -> 0.02; starting afresh" in result.stdout
    assert "resuming at" not in result.stdout.replace("not resuming", "")
    # its own snapshot is gone with the finished run; the killed run's stays for that run's rerun (snapshot.py)
    assert snapshots_in(folder) == [stale]
