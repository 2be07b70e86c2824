"""Snapshots: a fit resumed from one ends exactly where an uninterrupted fit does; another run's snapshot, or a
broken one, is never used, and says why."""

from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from conftest import NORM, easy_split
from fmnist_seq.config import ModelConfig, TrainConfig, as_dict
from fmnist_seq.snapshot import DEFAULT_FOLDER, SNAPSHOTS_ENV, RunKey, Snapshots, snapshot_folder
from fmnist_seq.training import fit

CFG = TrainConfig(model=ModelConfig(cell="gru", hidden_size=8, num_layers=2, dropout=0.2), optimizer="adamw", lr=0.01,
                  schedule="onecycle", batch_size=32, epochs=4, patience=0, grad_clip=1.0, label_smoothing=0.05,
                  device="cpu", workers=1)
TRAIN, VALID = easy_split(12, 0), easy_split(4, 1)


class Killed(Exception):
    """Stands in for a kill: training stops in the middle of an epoch, after the previous one was saved."""


def run_key(tmp_path: Path, cfg: TrainConfig = CFG, seed: int = 0, data: bytes = b"prepared") -> RunKey:
    (tmp_path / "train.pt").write_bytes(data)
    (tmp_path / "code.py").write_text("code")
    return RunKey.of("train_gru", as_dict(cfg), seed, 1, [tmp_path / "train.pt"], [str(tmp_path / "code.py")])


def train(snapshots: Snapshots | None = None, kill_in_epoch: int | None = None, cfg: TrainConfig = CFG,
          seed: int = 0) -> tuple:
    """fit, optionally killed during epoch `kill_in_epoch`; returns (result, epochs passed to on_epoch)."""
    seen: list[int] = []

    def on_epoch(record) -> None:
        seen.append(record.epoch)
        if record.epoch == kill_in_epoch:  # before the epoch's snapshot: the kill lands inside the epoch
            raise Killed

    return fit(cfg, TRAIN, VALID, NORM, seed, on_epoch=on_epoch, log=lambda _: None, snapshots=snapshots), seen


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


def test_a_run_killed_after_its_last_epoch_resumes_to_the_same_result(tmp_path):
    reference, _ = train()
    snapshots = Snapshots(run_key(tmp_path), tmp_path / "snapshots", log=lambda _: None)
    train(snapshots)  # finished, but (as after a kill before the outputs were written) the snapshot is still there
    assert snapshots.saved_epoch() == CFG.epochs
    resumed, seen = train(snapshots)
    assert_same_run(resumed, reference)
    assert seen == [1, 2, 3, 4]


@pytest.mark.parametrize("change, reason", [
    ({"cfg": replace(CFG, lr=0.02)}, "train_gru.lr 0.01 -> 0.02"),
    ({"seed": 1}, "seed 0 -> 1"),
    ({"data": b"other prepared data"}, "prepared data (train.pt) changed"),
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
    assert not stale.path.exists() and fresh.path.exists()  # one stage, one snapshot


def test_changed_code_is_named(tmp_path):
    key = run_key(tmp_path)
    (tmp_path / "code.py").write_text("other code")
    other = RunKey.of("train_gru", as_dict(CFG), 0, 1, [tmp_path / "train.pt"], [str(tmp_path / "code.py")])
    assert other.digest != key.digest
    assert other.differences(asdict(key)) == [f"code ({tmp_path / 'code.py'}) changed"]


def test_max_restarts_is_not_part_of_the_key(tmp_path):
    assert run_key(tmp_path, replace(CFG, max_restarts=0)).digest == run_key(tmp_path, replace(CFG, max_restarts=5)).digest


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
