"""The teacher's cached logits (stage teacher_logits): computed as the training loop computed the teacher's
probabilities before they were cached, bit for bit; refused when they are of other images; hashed into the
student's run key."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import NORM, easy_split, prepare_synthetic, train_project
from fmnist_seq import training
from fmnist_seq.checkpoint import checkpoint_sha256, load_checkpoint, save_checkpoint
from fmnist_seq.config import DistillConfig, ModelConfig, TrainConfig, load_block
from fmnist_seq.data import Split, load_split
from fmnist_seq.errors import TrainingError
from fmnist_seq.models import build_model, predict_logits
from fmnist_seq.teacher import (TEACHER_BATCH, compute_teacher_logits, images_sha256, load_teacher_logits,
                                save_teacher_logits, write_teacher_logits)
from fmnist_seq.training import TrainingJob, fit, teacher_probabilities
from fmnist_seq.training_stage import StageFiles, snapshots_of

# BatchNorm and dropout: eval mode matters, as for the pipeline's CNN teacher.
TEACHER = ModelConfig(cell="cnn", hidden_size=4, num_layers=2, head="all_steps", head_hidden=16, dropout=0.1)
STUDENT = TrainConfig(model=ModelConfig(cell="gru", hidden_size=16, num_layers=1, dropout=0.1), lr=0.01,
                      schedule="onecycle", batch_size=32, epochs=2, device="cpu", workers=1,
                      distill=DistillConfig(alpha=0.5, temperature=3.0))
TRAIN, VALID = easy_split(20, 0), easy_split(5, 1)


def a_teacher(seed: int = 0):
    """A CNN teacher with non-trivial running statistics (one pass in training mode), as trained ones have."""
    torch.manual_seed(seed)
    teacher = build_model(TEACHER, NORM.mean, NORM.std)
    with torch.no_grad():
        teacher.train()(TRAIN.images[:64])
    return teacher


def old_teacher_probabilities(job: TrainingJob, teacher) -> torch.Tensor:
    """What the training loop computed in every distilling run before the logits were cached (its code then, at the
    batch the cached pass uses now)."""
    logits = predict_logits(teacher.to(job.worker.device), job.train.images, TEACHER_BATCH, job.worker.device)
    return torch.softmax(logits / job.cfg.distill.temperature, dim=1).to(job.worker.device)


def test_probabilities_from_cached_logits_are_the_old_ones_bit_for_bit():
    """More images than a batch (the batch changes no bit either way), several temperatures."""
    images = torch.randint(0, 256, (2500, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    big = Split(images, torch.zeros(len(images), dtype=torch.long), torch.arange(len(images)))
    teacher = a_teacher()
    logits = compute_teacher_logits(teacher, images, "sha")
    assert logits.logits.dtype == torch.float32 and logits.count == len(images) and teacher.training  # restored
    for temperature in (1.0, 4.0, 7.5):
        job = TrainingJob(dataclasses.replace(STUDENT, distill=DistillConfig(alpha=0.5, temperature=temperature)),
                          big, VALID, NORM, 0, teacher=logits)
        assert torch.equal(teacher_probabilities(job), old_teacher_probabilities(job, teacher))


def test_a_student_distilled_from_cached_logits_is_the_one_distilled_before(monkeypatch):
    """The whole run, old path (the teacher's pass inside the run) against the cached logits: the same weights."""
    teacher = a_teacher()
    job = TrainingJob(STUDENT, TRAIN, VALID, NORM, 0, teacher=compute_teacher_logits(teacher, TRAIN.images, "sha"))
    new = fit(job, log=lambda _: None)
    monkeypatch.setattr(training, "teacher_probabilities", lambda job: old_teacher_probabilities(job, teacher))
    old = fit(job, log=lambda _: None)
    assert [r.results() for r in new.history] == [r.results() for r in old.history]
    for (name, a), b in zip(new.model.state_dict().items(), old.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("teacher-data"), per_class_train=10)


@pytest.fixture
def stage_output(tmp_path, prepared):
    """What stage teacher_logits writes for a saved teacher: (checkpoint, logits file, timings file)."""
    checkpoint = tmp_path / "teacher.pt"
    save_checkpoint(checkpoint, a_teacher(), {}, 1, {}, [])
    out, timings = tmp_path / "models" / "teacher_logits.pt", tmp_path / "results" / "timings.json"
    write_teacher_logits(checkpoint, prepared, out, timings, torch.device("cpu"))
    return checkpoint, out, timings


def test_the_stage_writes_the_teachers_logits_of_every_training_image_and_their_origin(stage_output, prepared):
    checkpoint, out, timings = stage_output
    train = load_split(prepared, "train")
    logits = load_teacher_logits(out, train.images)
    assert torch.equal(logits.logits, predict_logits(load_checkpoint(checkpoint).model, train.images, 1024))
    assert (logits.count, logits.cell) == (len(train), "cnn")
    assert logits.teacher_sha256 == checkpoint_sha256(checkpoint) and logits.images_sha256 == images_sha256(train.images)
    measured = json.loads(timings.read_text())
    assert measured["images"] == len(train) and measured["seconds"] >= 0 and measured["device"] == "cpu"


def test_logits_of_other_images_are_refused_with_how_to_remake_them(stage_output, prepared):
    _, out, _ = stage_output
    images = load_split(prepared, "train").images
    with pytest.raises(TrainingError, match=r"holds the teacher's logits of \d+ images, and the training split has "
                                            r"\d+: the file is stale or foreign; rerun `dvc repro teacher_logits`"):
        load_teacher_logits(out, images[1:])
    changed = images.clone()
    changed[0, 0, 0] ^= 1  # one pixel: another split of the same size (another seed, valid_ratio)
    with pytest.raises(TrainingError, match=r"teacher_logits.pt was computed on other training images .* rerun "
                                            "`dvc repro teacher_logits`"):
        load_teacher_logits(out, changed)
    reordered = images.flip(0)
    with pytest.raises(TrainingError, match="other training images"):
        load_teacher_logits(out, reordered)
    # The training loop checks too (fmnist-tune, the bench scripts and tests build jobs without the stage).
    cached = load_teacher_logits(out, images)
    split = Split(changed, torch.zeros(len(changed), dtype=torch.long), torch.arange(len(changed)))
    with pytest.raises(TrainingError, match="other training images"):
        teacher_probabilities(TrainingJob(STUDENT, split, VALID, NORM, 0, teacher=cached))


def test_a_missing_or_foreign_logits_file_says_how_to_remake_it(tmp_path):
    with pytest.raises(TrainingError, match=r"nothing.pt is missing: .* rerun `dvc repro teacher_logits`"):
        load_teacher_logits(tmp_path / "nothing.pt", TRAIN.images)
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(TrainingError, match=r"cut.pt is not a teacher logits file of this project .*rerun `dvc repro"):
        load_teacher_logits(tmp_path / "cut.pt", TRAIN.images)
    save_checkpoint(tmp_path / "teacher.pt", a_teacher(), {}, 1, {}, [])  # the checkpoint, given by mistake
    with pytest.raises(TrainingError, match="teacher.pt is not a teacher logits file"):
        load_teacher_logits(tmp_path / "teacher.pt", TRAIN.images)


def test_the_students_run_key_hashes_the_logits_file(tmp_path, prepared, monkeypatch):
    """A snapshot made with other logits (another teacher) is never resumed."""
    train_project(tmp_path, distill={"alpha": 0.5})
    monkeypatch.chdir(tmp_path)
    cfg = load_block(TrainConfig, "train_gru")
    images = load_split(prepared, "train").images

    def key_with(teacher_seed: int) -> str:
        path = tmp_path / f"logits-{teacher_seed}" / "teacher_logits.pt"
        save_teacher_logits(path, compute_teacher_logits(a_teacher(teacher_seed), images, str(teacher_seed)))
        files = StageFiles("gru", prepared, tmp_path / "gru.pt", tmp_path / "live", tmp_path / "t.json", path)
        snapshots = snapshots_of(files, cfg, 0, torch.device("cpu"), 1)
        assert "teacher_logits.pt" in snapshots.key.data
        return snapshots.key.digest

    assert key_with(0) == key_with(0) != key_with(1)
