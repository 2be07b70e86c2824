"""The training stage's run: it holds its snapshot while it lives, and the snapshot outlives every failure of the
worker group; only the end of the whole group (launcher returned, outputs written) removes it."""

import dataclasses
from pathlib import Path

import pytest

from conftest import prepare_synthetic, train_project
from fmnist_seq import training_stage
from fmnist_seq.errors import ParamsError, TrainingError
from fmnist_seq.snapshot import DEFAULT_FOLDER, Snapshots, _lock
from fmnist_seq.training_stage import StageFiles, run, train_worker


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("stage-data"), per_class_train=10)


def stage_files(folder: Path, prepared: Path, monkeypatch, **train_gru) -> StageFiles:
    train_project(folder, epochs=2, **train_gru)
    monkeypatch.chdir(folder)  # the stage reads params.yaml and keeps its snapshots here
    return StageFiles("gru", prepared, folder / "gru.pt", folder / "live", folder / "timings.json")


def snapshots_in(folder: Path) -> list[Path]:
    return sorted((folder / DEFAULT_FOLDER).glob("train_gru-*.pt"))


def test_a_worker_leaves_the_snapshot_to_the_process_that_owns_the_group(tmp_path, prepared, monkeypatch):
    files = stage_files(tmp_path, prepared, monkeypatch, workers=1)
    train_worker(files, group_owner=True)
    assert files.checkpoint.is_file() and len(snapshots_in(tmp_path)) == 1  # still there: the owner decides
    train_worker(files, group_owner=False)  # torchrun started by hand: rank 0 is the owner
    assert snapshots_in(tmp_path) == []


@pytest.mark.parametrize("group_fails", [True, False], ids=["a worker dies at the end", "all finish"])
def test_the_snapshot_is_removed_only_when_the_whole_group_succeeded(tmp_path, prepared, monkeypatch, group_fails):
    files = stage_files(tmp_path, prepared, monkeypatch, workers=2)
    found: list[Snapshots] = []

    def launch(workers: int, script: str, args: list[str], max_restarts: int) -> None:
        (snapshots,) = found
        assert _lock(Snapshots.lock_of(snapshots.path), wait=False) is None  # the stage holds its run throughout
        snapshots.save({"epoch": 2}, finished=True)  # rank 0 trained every epoch (and may have written the outputs)
        if group_fails:
            raise TrainingError("training worker rank 1 (pid 4242) was killed by SIGKILL; the launcher stopped "
                                "the other workers. No checkpoint was written")
    monkeypatch.setattr(training_stage, "launch", launch)
    if group_fails:
        with pytest.raises(TrainingError, match="all epochs are saved in .*: `dvc repro` writes the outputs from it"):
            run(files, "stages/train.py", [], found)
        assert snapshots_in(tmp_path) == [found[0].path]  # the next run resumes it and only writes the outputs
    else:
        run(files, "stages/train.py", [], found)
        assert not (tmp_path / DEFAULT_FOLDER).exists()  # snapshot, lock file and folder gone


def test_a_block_that_does_not_distill_reads_no_teacher_logits(tmp_path, prepared, monkeypatch, capsys):
    """What `dvc exp run -S train_lstm.distill.alpha=0` asks, dvc.yaml's --teacher-logits unchanged: the stage
    trains on the labels alone and says so, and neither it nor a launched worker opens the logits (here there are
    none). A distilling block without them is a clear error, before any training."""
    files = dataclasses.replace(stage_files(tmp_path, prepared, monkeypatch, workers=1),
                                teacher_logits=tmp_path / "no-such-logits.pt")
    run(files, "stages/train.py", [], [])
    assert (f"train_gru: distill.alpha is 0: training on the labels alone; the teacher's logits {files.teacher_logits}"
            " (--teacher-logits) are not read") in capsys.readouterr().out
    assert files.checkpoint.is_file() and not files.teacher_logits.exists()
    train_worker(files, group_owner=False)  # a worker reads the command line itself
    distilling = stage_files(tmp_path, prepared, monkeypatch, workers=1, distill={"alpha": 0.5})
    with pytest.raises(ParamsError, match="train_gru.distill.alpha = 0.5 needs the teacher's logits: give the "
                                          "stage's command --teacher-logits"):
        run(distilling, "stages/train.py", [], [])
    missing = dataclasses.replace(distilling, teacher_logits=tmp_path / "no-such-logits.pt")
    with pytest.raises(TrainingError, match=r"no-such-logits.pt is missing: rerun `dvc repro teacher_logits`"):
        run(missing, "stages/train.py", [], [])
