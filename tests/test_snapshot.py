"""Snapshots: a fit resumed from one ends exactly where an uninterrupted fit does; another run's snapshot, or a
broken one, is never used, and says why; a live run's snapshot is never cleared by another run."""

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from conftest import NORM, easy_split
from fmnist_seq import snapshot
from fmnist_seq.config import AugmentConfig, ModelConfig, TrainConfig
from fmnist_seq.snapshot import DEFAULT_FOLDER, SNAPSHOTS_ENV, STALE_AFTER_DAYS, RunKey, Snapshots, snapshot_folder
from fmnist_seq.training import TrainingJob, fit

CFG = TrainConfig(model=ModelConfig(cell="gru", hidden_size=8, num_layers=2, dropout=0.2), optimizer="adamw", lr=0.01,
                  schedule="onecycle", batch_size=32, epochs=4, patience=0, grad_clip=1.0, label_smoothing=0.05,
                  device="cpu", workers=1)
TRAIN, VALID = easy_split(12, 0), easy_split(4, 1)


class Killed(Exception):
    """Stands in for a kill: training stops in the middle of an epoch, after the previous one was saved."""


def run_key(tmp_path: Path, cfg: TrainConfig = CFG, seed: int = 0, data: bytes = b"prepared",
            device: torch.device = torch.device("cpu")) -> RunKey:
    (tmp_path / "train.pt").write_bytes(data)
    (tmp_path / "code.py").write_text("code")
    return RunKey.of("train_gru", cfg, seed, device, 1, [tmp_path / "train.pt"], [str(tmp_path / "code.py")])


def train(snapshots: Snapshots | None = None, kill_in_epoch: int | None = None, cfg: TrainConfig = CFG,
          seed: int = 0) -> tuple:
    """fit, optionally killed during epoch `kill_in_epoch`; returns (result, epochs passed to on_epoch)."""
    seen: list[int] = []

    def on_epoch(record) -> None:
        seen.append(record.epoch)
        if record.epoch == kill_in_epoch:  # before the epoch's snapshot: the kill lands inside the epoch
            raise Killed

    return fit(TrainingJob(cfg, TRAIN, VALID, NORM, seed), on_epoch=on_epoch, log=lambda _: None,
               snapshots=snapshots), seen


def assert_same_run(a, b) -> None:
    assert a.selected_epoch == b.selected_epoch
    assert [r.results() for r in a.history] == [r.results() for r in b.history]
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name


def test_a_resumed_fit_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    reference, _ = train()
    lines: list[str] = []
    snapshots = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lines.append)
    with pytest.raises(Killed):
        train(snapshots, kill_in_epoch=3)
    assert snapshots.saved_epoch() == 2
    assert "epochs 1-2 are saved" in snapshots.describe_saved() and "resumes at epoch 3" in snapshots.describe_saved()

    resumed, seen = train(snapshots)
    assert_same_run(resumed, reference)
    assert seen == [1, 2, 3, 4]  # the restored epochs are replayed first: the learning curves continue
    assert len(resumed.snapshot_seconds) == 2 and reference.snapshot_seconds == []  # timed, for timings.json
    assert len(lines) == 1 and lines[0].startswith(f"train_gru: resuming at epoch 3 of 4 from {snapshots.path}")


def test_a_resumed_fit_with_augmentation_draws_the_same_changes(tmp_path):
    """The augmentation's random stream is part of the state: a resumed run changes its images as an
    uninterrupted one does."""
    changed = replace(CFG, augment=AugmentConfig(flip=0.5, shift=1))
    reference, _ = train(cfg=changed)
    snapshots = Snapshots(run_key(tmp_path, changed), tmp_path / "snapshots", log=lambda _: None)
    with pytest.raises(Killed):
        train(snapshots, kill_in_epoch=3, cfg=changed)
    resumed, _ = train(snapshots, cfg=changed)
    assert_same_run(resumed, reference)


def test_a_run_that_stopped_early_is_reported_as_ended_not_as_resumable(tmp_path):
    """Early stopping ends training before `epochs`: what is saved then is the whole run, and its rerun only
    writes the outputs."""
    early = replace(CFG, epochs=8, patience=1, lr=1.0, schedule="constant", optimizer="sgd")
    lines: list[str] = []
    snapshots = Snapshots(run_key(tmp_path, early), tmp_path / "snapshots", log=lines.append)
    first, _ = train(snapshots, cfg=early)
    ended = len(first.history)
    assert ended < early.epochs, "this run is meant to stop early"
    assert snapshots.describe_saved() == (f"epochs 1-{ended}, where training stopped early, are saved in "
                                          f"{snapshots.path}: `dvc repro` writes the outputs from it")
    again, seen = train(snapshots, cfg=early)
    assert_same_run(again, first)
    assert seen == list(range(1, ended + 1))
    assert len(lines) == 1 and lines[0].startswith(f"train_gru: training already ended at epoch {ended} of 8 (early "
                                                   f"stop); writing the outputs from {snapshots.path} (snapshot of ")


def test_a_run_killed_after_its_last_epoch_resumes_to_the_same_result(tmp_path):
    reference, _ = train()
    snapshots = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lambda _: None)
    train(snapshots)  # finished, but (as after a kill before the outputs were written) the snapshot is still there
    assert snapshots.saved_epoch() == CFG.epochs
    resumed, seen = train(snapshots)
    assert_same_run(resumed, reference)
    assert seen == [1, 2, 3, 4]


@pytest.mark.parametrize("change, reason", [
    ({"cfg": replace(CFG, lr=0.02)}, "train_gru.lr: 0.01 -> 0.02"),
    ({"seed": 1}, "seed 0 -> 1"),
    ({"data": b"other prepared data"}, "input (train.pt) changed"),
], ids=["lr", "seed", "data"])
def test_another_runs_snapshot_is_not_resumed_and_says_why(tmp_path, change, reason):
    stale = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lambda _: None)
    with pytest.raises(Killed):
        train(stale, kill_in_epoch=3)
    lines: list[str] = []
    cfg, seed = change.get("cfg", CFG), change.get("seed", 0)
    fresh = Snapshots(run_key(tmp_path, cfg, seed, change.get("data", b"prepared")), tmp_path / "snapshots",
                      log=lines.append)
    result, seen = train(fresh, cfg=cfg, seed=seed)
    assert seen == [1, 2, 3, 4]  # from the start
    assert_same_run(result, train(cfg=cfg, seed=seed)[0])
    assert len(lines) == 1 and f"not resuming {stale.path}: {reason}; starting afresh" in lines[0], lines
    assert stale.path.exists() and fresh.path.exists()  # the killed run's stays, for its own rerun to resume


def test_a_bf16_snapshot_is_not_resumed_by_an_fp32_run(tmp_path):
    """precision changes the numbers: it is in the run key, so an fp32 run starts afresh beside a bf16 one's
    snapshot (and the other way round) instead of continuing weights trained in another arithmetic."""
    bf16 = replace(CFG, precision="bf16")
    assert run_key(tmp_path, bf16).params["precision"] == "bf16"
    assert run_key(tmp_path, bf16).digest != run_key(tmp_path, CFG).digest
    stale = Snapshots(run_key(tmp_path, bf16), tmp_path / "snapshots", log=lambda _: None)
    with pytest.raises(Killed):
        train(stale, kill_in_epoch=3, cfg=bf16)
    lines: list[str] = []
    fresh = Snapshots(run_key(tmp_path, CFG), tmp_path / "snapshots", log=lines.append)
    result, seen = train(fresh)
    assert seen == [1, 2, 3, 4]  # from the start
    assert_same_run(result, train()[0])
    assert len(lines) == 1 and f"not resuming {stale.path}: train_gru.precision: 'bf16' -> 'fp32'" in lines[0], lines


def test_changed_code_is_named(tmp_path):
    key = run_key(tmp_path)
    (tmp_path / "code.py").write_text("other code")
    other = RunKey.of("train_gru", CFG, 0, torch.device("cpu"), 1, [tmp_path / "train.pt"], [str(tmp_path / "code.py")])
    assert other.digest != key.digest
    assert other.differences(asdict(key)) == [f"code ({tmp_path / 'code.py'}) changed"]


def test_max_restarts_is_not_part_of_the_key(tmp_path):
    assert run_key(tmp_path, replace(CFG, max_restarts=0)).digest == run_key(tmp_path, replace(CFG, max_restarts=5)).digest


def test_a_cuda_snapshot_is_not_resumed_on_the_cpu_nor_under_another_torch(tmp_path, monkeypatch):
    """The CUDA random state and kernels are not the CPU's: the resolved device and torch's version are in the key."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    cpu, cuda = run_key(tmp_path), run_key(tmp_path, device=torch.device("cuda"))
    assert cuda.device == "cuda (NVIDIA H200)" and cpu.device == "cpu" and cpu.torch == torch.__version__
    assert cpu.digest != cuda.digest
    assert cpu.differences(asdict(cuda)) == ["device 'cuda (NVIDIA H200)' -> 'cpu'"]
    older = replace(cpu, torch="2.13.0")
    assert older.digest != cpu.digest and cpu.differences(asdict(older)) == [f"torch '2.13.0' -> {torch.__version__!r}"]

    saved_on_gpu = Snapshots(cuda, tmp_path / "snapshots", log=lambda _: None)
    saved_on_gpu.save({"epoch": 2}, finished=False)
    lines: list[str] = []
    assert Snapshots(cpu, tmp_path / "snapshots", log=lines.append).load() is None
    assert lines == [f"train_gru: not resuming {saved_on_gpu.path}: device 'cuda (NVIDIA H200)' -> 'cpu'; starting afresh"]


HOLD = """
import sys, torch
from pathlib import Path
from fmnist_seq.config import ModelConfig, TrainConfig
from fmnist_seq.snapshot import RunKey, Snapshots
tmp = Path(sys.argv[1])
cfg = TrainConfig(model=ModelConfig(cell="gru", hidden_size=8, num_layers=2, dropout=0.2), optimizer="adamw", lr=0.01,
                  schedule="onecycle", batch_size=32, epochs=4, patience=0, grad_clip=1.0, label_smoothing=0.05,
                  device="cpu", workers=1)
key = RunKey.of("train_gru", cfg, 0, torch.device("cpu"), 1, [tmp / "train.pt"], [str(tmp / "code.py")])
snapshots = Snapshots(key, tmp / "snapshots")
with snapshots.held():
    snapshots.save({"epoch": 1}, finished=False)
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin, or kills this process
"""


def hold_in_another_process(tmp_path: Path) -> subprocess.Popen:
    """A live run of CFG (seed 0) in a process of its own, as a second `dvc queue` worker would be."""
    run_key(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline() == "held\n", "the holder exited before taking its lock"
    return process


def test_a_live_runs_snapshot_is_never_cleared_by_another_run(tmp_path):
    live = hold_in_another_process(tmp_path)
    try:
        live_snapshot = Snapshots(run_key(tmp_path), tmp_path / "snapshots").path
        other = Snapshots(run_key(tmp_path, replace(CFG, lr=0.02)), tmp_path / "snapshots", log=lambda _: None)
        with other.held():
            train(other, cfg=replace(CFG, lr=0.02))  # its first save clears the stage's stale snapshots only
        assert live_snapshot.exists() and other.path.exists()
    finally:
        live.kill()  # SIGKILL: the kernel releases the lock, so the snapshot is a dead run's from now on
        live.wait()
    third = Snapshots(run_key(tmp_path, replace(CFG, lr=0.03)), tmp_path / "snapshots", log=lambda _: None)
    with third.held():
        train(third, cfg=replace(CFG, lr=0.03))
    assert live_snapshot.exists() and other.path.exists()  # dead runs' now, but recent: their reruns may resume
    make_old(*third.folder.iterdir())  # every file of these runs: snapshots and lock files
    fourth = Snapshots(run_key(tmp_path, replace(CFG, lr=0.04)), tmp_path / "snapshots", log=lambda _: None)
    with third.held():  # a live run's snapshot is never cleared, however old
        with fourth.held():
            train(fourth, cfg=replace(CFG, lr=0.04))
        assert third.path.exists()
    assert not live_snapshot.exists() and not Snapshots.lock_of(live_snapshot).exists()
    assert not other.path.exists()  # unused for a week and nobody holds it: cleared


def test_runs_killed_together_each_resume_whichever_reruns_first(tmp_path):
    """Two queued experiments (other lr) killed in the same epoch: the first rerun finishes without clearing
    the other's snapshot, and the second rerun resumes it too (dvc queue start -j 2, then SIGKILL)."""
    cfgs = [CFG, replace(CFG, lr=0.02)]
    runs = [Snapshots(run_key(tmp_path, cfg), tmp_path / "snapshots", log=lambda _: None) for cfg in cfgs]
    for run, cfg in zip(runs, cfgs):
        with run.held(), pytest.raises(Killed):
            train(run, kill_in_epoch=3, cfg=cfg)
    for run, cfg in zip(runs, cfgs):
        lines: list[str] = []
        rerun = Snapshots(run.key, tmp_path / "snapshots", log=lines.append)
        with rerun.held():
            result, _ = train(rerun, cfg=cfg)
        assert lines and lines[0].startswith("train_gru: resuming at epoch 3 of 4"), lines
        assert_same_run(result, train(cfg=cfg)[0])


def make_old(*paths: Path) -> None:
    """As if last written just over STALE_AFTER_DAYS ago."""
    week_ago = time.time() - (STALE_AFTER_DAYS * 86400 + 60)
    for path in paths:
        os.utime(path, (week_ago, week_ago))


def test_every_file_a_dead_run_left_goes_with_its_snapshot(tmp_path):
    """A run killed before its first save leaves only a lock file, one killed mid-write a `.tmp`: nobody's
    snapshot, but cleared by the same rule, a week after they were last written and unless a live run holds them."""
    folder = tmp_path / "snapshots"
    folder.mkdir()
    killed_before_saving = folder / f"train_gru-{'a' * 16}.lock"
    killed_mid_write = folder / f".train_gru-{'b' * 16}.pt.1a2b3c4d.tmp"
    dead = [folder / f"train_gru-{'c' * 16}{suffix}" for suffix in (".pt", ".lock")] + [
        folder / f".train_gru-{'c' * 16}.pt.5e6f7a8b.tmp"]
    live_lock = folder / f"train_gru-{'d' * 16}.lock"
    recent = folder / f"train_gru-{'e' * 16}.lock"
    other_stage = folder / f"train_rnn-{'f' * 16}.lock"
    for path in (killed_before_saving, killed_mid_write, *dead, live_lock, recent, other_stage):
        path.write_bytes(b"")
    make_old(killed_before_saving, killed_mid_write, *dead, live_lock, other_stage)
    held = snapshot._lock(live_lock, wait=False)  # a live run (locks are per open file, so this process will do)
    try:
        Snapshots(run_key(tmp_path), folder, log=lambda _: None).save({"epoch": 1}, finished=False)
        assert not any(path.exists() for path in (killed_before_saving, killed_mid_write, *dead))
        assert live_lock.exists() and recent.exists() and other_stage.exists()
    finally:
        os.close(held)


def test_an_unreadable_snapshot_set_aside_is_kept_a_week_from_then(tmp_path):
    """A rename keeps the file's old time: set aside, a week-old snapshot was cleared by the next save at once."""
    snapshots = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lambda _: None)
    snapshots.folder.mkdir()
    snapshots.path.write_bytes(b"not a snapshot")
    make_old(snapshots.path)
    assert snapshots.load() is None
    (aside,) = snapshots.folder.glob(f"{snapshots.path.stem}.unreadable-*.pt")
    snapshots.save({"epoch": 1}, finished=False)  # the same run's first save
    assert aside.exists()
    snapshots.remove()  # the run is done
    other = Snapshots(run_key(tmp_path, replace(CFG, lr=0.02)), snapshots.folder, log=lambda _: None)
    other.save({"epoch": 1}, finished=False)  # another run's first save
    assert aside.exists()


def test_a_second_run_with_the_same_key_waits_for_the_first(tmp_path):
    live = hold_in_another_process(tmp_path)
    lines: list[str] = []
    waiting, acquired = threading.Event(), threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        waiting.set()

    def second() -> None:
        with Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=log).held():
            acquired.set()
    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    try:
        assert waiting.wait(timeout=60) and not acquired.is_set()
        assert "another run with the same params is training" in lines[0] and "waiting for it to end" in lines[0]
    finally:
        live.kill()
        live.wait()
    thread.join(timeout=60)
    assert acquired.is_set()


def test_a_run_takes_its_lock_even_when_another_run_removes_the_folder_first(tmp_path, monkeypatch):
    """Another run's `remove` deletes the folder once it is empty; landing just before this run opens its lock
    file, that once made the run train without a lock, then fail at its end and lose its outputs."""
    lines: list[str] = []
    snapshots = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lines.append)
    lock = Snapshots.lock_of(snapshots.path)
    real_open, removals = os.open, []

    def open_after_removal(path, *args, **kwargs):
        if Path(path) == lock and not removals:  # the other run's remove() lands here, once
            removals.append(path)
            shutil.rmtree(snapshots.folder, ignore_errors=True)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(snapshot.os, "open", open_after_removal)
    with snapshots.held():
        assert removals and snapshot._lock(lock, wait=False) is None  # held, by this run
    assert lines == []  # nobody else holds the key: no wait
    fd = snapshot._lock(lock, wait=False)
    assert fd is not None  # released at the end
    os.close(fd)


def test_a_lock_file_replaced_while_being_locked_is_seen_held(tmp_path, monkeypatch):
    """A run may remove its lock file just after another opened it, and a new run make and hold a new one: the
    clearing run must see that one held, not take the file for gone."""
    lock = tmp_path / f"train_gru-{'a' * 16}.lock"
    lock.write_bytes(b"")
    real_flock, holders = fcntl.flock, []

    def flock_after_replacement(fd, operation):
        if not holders:
            holders.append(None)
            lock.unlink()
            holders[0] = snapshot._lock(lock, wait=False)  # the new run
        return real_flock(fd, operation)
    monkeypatch.setattr(snapshot.fcntl, "flock", flock_after_replacement)
    try:
        assert snapshot._lock(lock, wait=False, create=False) is None
    finally:
        os.close(holders[0])


def test_a_snapshot_that_vanishes_while_listed_is_no_error(tmp_path, monkeypatch):
    """Another run may clear or finish its snapshot between the listing and the look at it."""
    snapshots = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lambda _: None)
    monkeypatch.setattr(Snapshots, "_others", lambda self: [self.folder / "train_gru-gone.pt"])
    assert snapshots.load() is None


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled object"])
def test_a_broken_snapshot_warns_in_one_line_and_training_starts_afresh(tmp_path, damage):
    reference, _ = train()
    snapshots = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lambda _: None)
    with pytest.raises(Killed):
        train(snapshots, kill_in_epoch=3)
    if damage == "truncated":
        snapshots.path.write_bytes(snapshots.path.read_bytes()[:1000])
    elif damage == "garbage":
        snapshots.path.write_bytes(b"not a snapshot")
    else:  # loading must never run code from a file: weights_only refuses arbitrary objects
        torch.save({"format_version": 1, "key": {}, "state": Path("x")}, snapshots.path)
    lines: list[str] = []
    snapshots.log = lines.append
    result, seen = train(snapshots)
    assert seen == [1, 2, 3, 4]
    assert_same_run(result, reference)
    assert len(lines) == 1 and lines[0].startswith(f"train_gru: warning: ignoring unreadable snapshot {snapshots.path}")
    assert lines[0].endswith("starting afresh") and "\n" not in lines[0]
    aside = list(snapshots.folder.glob(f"{snapshots.path.stem}.unreadable-*.pt"))  # kept for inspection, and named
    assert len(aside) == 1 and f"kept as {aside[0]} for inspection" in lines[0]


def test_remove_leaves_nothing_behind(tmp_path):
    snapshots = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lambda _: None)
    train(snapshots)
    (snapshots.folder / f".{snapshots.path.name}.abc.tmp").write_bytes(b"a write cut short")
    snapshots.remove()
    assert not snapshots.folder.exists()
    assert snapshots.describe_saved().startswith("no epoch had finished")


def test_snapshot_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(SNAPSHOTS_ENV, raising=False)
    assert snapshot_folder(tmp_path) == tmp_path.resolve() / DEFAULT_FOLDER
    # A queued experiment's temporary workspace keeps its snapshots in the repository it was queued from.
    queued = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    queued.mkdir(parents=True)
    assert snapshot_folder(queued) == (tmp_path / "repo").resolve() / DEFAULT_FOLDER
    monkeypatch.setenv(SNAPSHOTS_ENV, str(tmp_path / "shared"))
    assert snapshot_folder(queued) == (tmp_path / "shared").resolve()
