import copy
import os

import pytest
import torch
from torch import nn

from conftest import NORM, easy_split
from fmnist_seq.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from fmnist_seq.config import AugmentConfig, DistillConfig, ModelConfig, TrainConfig, as_dict, build
from fmnist_seq.data import Normalization, Split
from fmnist_seq.errors import CheckpointError, ParamsError, TrainingError
from fmnist_seq.models import (Classifier, ConvClassifier, SequenceClassifier, count_parameters, forward_flops,
                               predict_logits)
from fmnist_seq.teacher import compute_teacher_logits
from fmnist_seq.training import (EarlyStopping, Step, TrainingJob, fit, global_batches, make_optimizer,
                                 make_scheduler, seed_everything)


RNN = ModelConfig(cell="rnn", hidden_size=16, num_layers=1, bidirectional=True, head="all_steps", head_hidden=32,
                  dropout=0.1)
GRU = ModelConfig(cell="gru", hidden_size=16, num_layers=2, head="last_step", dropout=0.1)


TRAIN, VALID = easy_split(20, 0), easy_split(5, 1)


def cfg(model: ModelConfig, **overrides) -> TrainConfig:
    base = dict(model=model, optimizer="adamw", lr=0.01, schedule="onecycle", batch_size=32, epochs=4, patience=0,
                grad_clip=1.0, label_smoothing=0.05, device="cpu", workers=1)
    return TrainConfig(**{**base, **overrides})


def train(config: TrainConfig, train_split: Split = TRAIN, seed: int = 0):
    return fit(TrainingJob(config, train_split, VALID, NORM, seed), log=quiet)


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("model", [RNN, GRU], ids=["rnn", "gru"])
def test_trained_model_beats_chance_clearly(model):
    result = train(cfg(model, epochs=6))
    assert result.selected.valid_accuracy >= 0.6  # chance is 0.1
    assert result.selected_epoch == min(range(1, 7), key=lambda e: result.history[e - 1].valid_loss)


def test_training_is_deterministic_on_cpu():
    a = train(cfg(GRU, epochs=2), seed=5)
    b = train(cfg(GRU, epochs=2), seed=5)
    assert [r.valid_loss for r in a.history] == [r.valid_loss for r in b.history]
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k
    c = train(cfg(GRU, epochs=2), seed=6)
    assert [r.valid_loss for r in c.history] != [r.valid_loss for r in a.history]


def test_early_stopping_selects_best_validation_loss():
    stopper = EarlyStopping(patience=2)
    curve = [1.0, 0.8, 0.7, 0.75, 0.72, 0.6]
    stopped_at = None
    for epoch, loss in enumerate(curve, start=1):
        stopper.update(epoch, loss)
        if stopper.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == 5 and stopper.best_epoch == 3 and stopper.best_loss == 0.7
    never = EarlyStopping(patience=0)
    for epoch, loss in enumerate([1, 2, 3, 4, 5], start=1):
        never.update(epoch, loss)
    assert not never.should_stop and never.best_epoch == 1


def test_fit_stops_early_and_keeps_selected_weights():
    result = train(cfg(GRU, epochs=8, patience=1, lr=0.5, schedule="constant", optimizer="sgd"))
    losses = [r.valid_loss for r in result.history]
    assert len(losses) < 8, "this run is meant to stop early"
    assert result.selected_epoch == losses.index(min(losses)) + 1
    logits = result.model.eval()(VALID.images)
    loss = torch.nn.functional.cross_entropy(logits, VALID.labels).item()
    assert loss == pytest.approx(result.selected.valid_loss, rel=1e-4)


def test_the_logged_learning_rate_is_the_mean_of_the_epochs_own_steps():
    """The schedule moves the rate every step: each epoch logs the mean of the rates its steps used (the rate read
    after its last step would be the next epoch's first)."""
    config = cfg(GRU, epochs=3)
    steps = len(global_batches(len(TRAIN), config.batch_size, 1))
    optimizer = make_optimizer(config, torch.nn.Linear(1, 1))
    scheduler = make_scheduler(config, optimizer, steps)
    rates = []
    for _ in range(config.epochs * steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    expected = [sum(rates[start:start + steps]) / steps for start in range(0, len(rates), steps)]
    assert [record.mean_lr for record in train(config).history] == pytest.approx(expected, rel=1e-12)


def test_non_finite_loss_stops_with_the_epoch():
    broken = Normalization(mean=0.0, std=0.0)  # 0/0 for background pixels: NaN inputs, NaN loss
    with pytest.raises(TrainingError, match=r"training loss became nan in epoch 1: training diverged"):
        fit(TrainingJob(cfg(GRU, epochs=2), TRAIN, VALID, broken, 0), log=quiet)


def test_global_batches_cover_the_epoch_and_drop_only_a_too_small_tail():
    assert [(b.start, b.stop) for b in global_batches(70, 32, 1)] == [(0, 32), (32, 64), (64, 70)]
    assert [(b.start, b.stop) for b in global_batches(70, 32, 2)] == [(0, 32), (32, 64), (64, 70)]
    assert [(b.start, b.stop) for b in global_batches(65, 32, 2)] == [(0, 32), (32, 64)]  # 1 image, 2 workers
    assert len(global_batches(64, 32, 2)) == 2


@pytest.mark.parametrize("head", ["all_steps", "last_step", "mean_steps", "max_steps"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_model_shapes_for_every_cell_and_head(cell, head):
    x = torch.zeros(3, 28, 28, dtype=torch.uint8)
    for bidirectional in (False, True):
        model_cfg = ModelConfig(cell=cell, hidden_size=8, num_layers=2, bidirectional=bidirectional, head=head)
        assert SequenceClassifier(model_cfg, 0.5, 0.25)(x).shape == (3, 10)


def test_last_step_head_reads_each_direction_s_final_state():
    """Forward direction: its state after row 28; backward direction: its state after row 1."""
    for cell in ("gru", "lstm"):
        model = SequenceClassifier(ModelConfig(cell=cell, hidden_size=4, bidirectional=True), 0.0, 1.0).eval()
        pixels = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
        outputs, _ = model.encoder(model.normalize(pixels))
        final = torch.cat([outputs[:, -1, :4], outputs[:, 0, 4:]], dim=1)
        assert torch.allclose(model(pixels), model.head(final), atol=1e-6), cell


def test_pooled_heads_pool_over_the_rows():
    model = SequenceClassifier(ModelConfig(cell="gru", hidden_size=4, head="mean_steps"), 0.0, 1.0).eval()
    pixels = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    outputs, _ = model.encoder(pixels.float() / 255.0)
    assert torch.allclose(model(pixels), model.head(outputs.mean(dim=1)))
    model.cfg = ModelConfig(cell="gru", hidden_size=4, head="max_steps")
    assert torch.allclose(model(pixels), model.head(outputs.amax(dim=1)))
    model.cfg = ModelConfig(cell="gru", hidden_size=4, head="last_step")
    assert torch.allclose(model(pixels), model.head(outputs[:, -1]))


def test_model_normalizes_raw_pixels_itself():
    model = SequenceClassifier(GRU, mean=0.25, std=0.5).eval()
    pixels = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    expected = (pixels.float() / 255.0 - 0.25) / 0.5
    captured = {}

    def capture(module, args, output) -> None:
        captured["x"] = args[0]

    model.encoder.register_forward_hook(capture)
    model(pixels)
    assert torch.equal(captured["x"], expected)
    assert model.normalization == (0.25, 0.5)
    assert {"pixel_mean", "pixel_std"} <= set(model.state_dict())  # saved with the weights


def test_report_sizes_flops_and_parameters():
    report_rnn = ModelConfig(cell="rnn", hidden_size=128, bidirectional=True, head="all_steps", head_hidden=512)
    report_gru = ModelConfig(cell="gru", hidden_size=128, num_layers=2)
    assert count_parameters(SequenceClassifier(report_rnn, 0.0, 1.0)) == 3_716_106
    assert round(forward_flops(report_rnn) / 1e6, 1) == 9.6
    assert round(forward_flops(report_gru) / 1e6, 1) == 8.9


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    result = train(cfg(GRU, epochs=1))
    path = tmp_path / "gru.pt"
    save_checkpoint(path, result.model, as_dict(cfg(GRU, epochs=1)), result.selected_epoch,
                    {"loss": result.selected.valid_loss, "accuracy": result.selected.valid_accuracy},
                    [r.results() for r in result.history])
    ckpt = load_checkpoint(path, GRU)
    assert ckpt.selected_epoch == 1 and ckpt.model.normalization == pytest.approx((NORM.mean, NORM.std))
    assert ckpt.valid["accuracy"] == result.selected.valid_accuracy and ckpt.train_params["model"]["cell"] == "gru"
    assert torch.equal(predict_logits(ckpt.model, VALID.images, 50), predict_logits(result.model, VALID.images, 50))
    torch.load(path, weights_only=True)  # never needs arbitrary unpickling
    other = ModelConfig(cell="gru", hidden_size=32, num_layers=2)
    with pytest.raises(CheckpointError, match=r"gru.pt was trained with another architecture.*hidden_size: checkpoint 16 vs params 32"):
        load_checkpoint(path, other)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt cannot be read"):
        load_checkpoint(truncated, GRU)
    with pytest.raises(CheckpointError, match="missing.pt is missing"):
        load_checkpoint(tmp_path / "missing.pt")
    blob = torch.load(path, weights_only=True)
    del blob["valid"]
    torch.save(blob, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="broken.pt is not a checkpoint of this project"):
        load_checkpoint(tmp_path / "broken.pt")
    blob = torch.load(path, weights_only=True)
    blob["format_version"] = FORMAT_VERSION - 1  # float inputs, normalization outside the model
    torch.save(blob, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=f"old.pt has checkpoint format 1, this code reads {FORMAT_VERSION}"):
        load_checkpoint(tmp_path / "old.pt")


def test_cublas_workspace_is_fixed_before_cuda_training(monkeypatch):
    # Deterministic mode on CUDA needs cuBLAS's fixed workspace, read when the first handle is made: training on
    # CUDA sets it when it seeds, before any matmul; on the CPU the environment is left alone.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seed_everything(0, torch.device("cpu"))
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    try:
        seed_everything(0, torch.device("cuda"))  # only sets flags: needs no GPU
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(True)


# --- the CNN teacher and distillation -------------------------------------------------------------------------

TEACHER = ModelConfig(cell="cnn", hidden_size=4, num_layers=2, head="all_steps", head_hidden=16, dropout=0.1)


def test_a_cnn_teacher_trains_and_checkpoints_like_any_model(tmp_path):
    result = train(cfg(TEACHER, epochs=4))
    assert result.selected.valid_accuracy >= 0.6
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, result.model, as_dict(cfg(TEACHER)), result.selected_epoch,
                    {"loss": result.selected.valid_loss, "accuracy": result.selected.valid_accuracy}, [])
    ckpt = load_checkpoint(path, TEACHER)
    assert isinstance(ckpt.model, ConvClassifier)
    assert torch.equal(predict_logits(ckpt.model, VALID.images, 50), predict_logits(result.model, VALID.images, 50))
    # 28 -> 14 -> 7: conv 1->4 on 28x28, conv 4->8 on 14x14, then the head on 8 x 7 x 7 positions
    assert forward_flops(TEACHER) == 2 * (28 * 28 * 1 * 4 * 9 + 14 * 14 * 4 * 8 * 9 + 8 * 7 * 7 * 16 + 16 * 10)


def test_the_cnn_runs_in_channels_last_through_training_and_checkpoints(tmp_path):
    """The faster layout (docs/performance.md) holds for the trained weights, the loaded ones and every block's
    feature maps; the head still reads the positions in (channel, row, column) order, as a plain NCHW model does."""
    result = train(cfg(TEACHER, epochs=1))
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, result.model, as_dict(cfg(TEACHER)), 1, {"loss": 0.0, "accuracy": 0.0}, [])
    for model in (result.model, load_checkpoint(path, TEACHER).model):
        convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        maps = model.encoder(model.normalize(VALID.images[:8]).unsqueeze(1))
        assert maps.is_contiguous(memory_format=torch.channels_last) and not maps.is_contiguous()
        plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
        assert torch.allclose(plain(VALID.images[:8]), model.eval()(VALID.images[:8]), atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"bidirectional": True}, "cell cnn takes head: all_steps and bidirectional: false"),
    ({"head": "last_step"}, "cell cnn takes head: all_steps and bidirectional: false"),
    ({"num_layers": 5}, "teacher.model.num_layers = 5 is out of range for cell cnn: must be <= 4"),
])
def test_a_cnn_has_no_steps_directions_or_sixth_halving(change, message):
    with pytest.raises(ParamsError, match=message):
        build(ModelConfig, {**as_dict(TEACHER), **change}, "teacher.model")


class ConstantTeacher(Classifier):
    """A teacher that is sure of one class whatever it sees."""

    def __init__(self, favourite: int) -> None:
        super().__init__(TEACHER, 0.0, 1.0)
        self.logits = torch.full((10,), -5.0)
        self.logits[favourite] = 5.0

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), 10)


def test_distillation_learns_the_teachers_probabilities():
    """With all the weight on the teacher, the student follows it, not the labels: here, to one class."""
    distilled = cfg(GRU, epochs=3, distill=DistillConfig(alpha=1.0, temperature=2.0))
    logits = compute_teacher_logits(ConstantTeacher(3), TRAIN.images, "constant")
    result = fit(TrainingJob(distilled, TRAIN, VALID, NORM, 0, teacher=logits), log=quiet)
    predicted = predict_logits(result.model, VALID.images, 50).argmax(1)
    assert (predicted == 3).float().mean() > 0.9


class FixedLogits(nn.Module):
    """A student whose logits are its parameters, whatever it sees: their gradient is the loss's."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def logit_gradient(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                   temperature: float) -> torch.Tensor:
    """The gradient of one training step's loss on the student's logits, distilling from the teacher's logits."""
    model = FixedLogits(student)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = Step(model, optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0),
                nn.CrossEntropyLoss(), grad_clip=0.0, distill=DistillConfig(alpha=alpha, temperature=temperature))
    step(torch.zeros(len(labels)), labels, teacher=torch.softmax(teacher / temperature, dim=1))
    return model.logits.grad


def test_the_teachers_term_is_scaled_by_t_squared_and_mixed_by_alpha():
    """The soft term is T^2 * KL(teacher || student at T): its gradient on the logits is T (q - p) / batch, which
    stays on the labels' scale at any temperature: about (student - teacher) / (classes * batch) when T is high
    (Hinton et al., 2015). The labels' term and the teacher's weigh 1 - alpha and alpha."""
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=generator), torch.randn(8, 10, generator=generator)
    student, teacher = student - student.mean(1, keepdim=True), teacher - teacher.mean(1, keepdim=True)
    labels = torch.arange(8)
    for t in (1.0, 4.0, 16.0):
        soft = logit_gradient(student, teacher, labels, alpha=1.0, temperature=t)
        exact = t * (torch.softmax(student / t, dim=1) - torch.softmax(teacher / t, dim=1)) / 8
        assert torch.allclose(soft, exact, rtol=1e-4, atol=1e-6), t
    high = logit_gradient(student, teacher, labels, alpha=1.0, temperature=16.0)
    assert torch.allclose(high, (student - teacher) / (10 * 8), rtol=0.1, atol=2e-3)
    hard = logit_gradient(student, teacher, labels, alpha=0.0, temperature=4.0)
    assert torch.allclose(hard, (torch.softmax(student, dim=1) - nn.functional.one_hot(labels, 10)) / 8, atol=1e-7)
    mixed = logit_gradient(student, teacher, labels, alpha=0.3, temperature=4.0)
    soft = logit_gradient(student, teacher, labels, alpha=1.0, temperature=4.0)
    assert torch.allclose(mixed, 0.7 * hard + 0.3 * soft, rtol=1e-4, atol=1e-6)


class WatchedTeacher(Classifier):
    """A teacher whose logits are some of the pixels; it remembers its mode and the images of each call."""

    def __init__(self) -> None:
        super().__init__(TEACHER, 0.0, 1.0)
        self.calls: list[tuple[bool, torch.Tensor]] = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, pixels.clone()))
        return super().forward(pixels)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 14, 4:14]


def test_the_teacher_sees_each_training_image_once_unchanged_in_eval_mode():
    """Its logits are computed once (stage teacher_logits), in eval mode (no dropout, a BatchNorm's running
    statistics), on the train split as it is; a distilling block refuses augmentation (above)."""
    teacher = WatchedTeacher()  # in training mode, as a module is made
    logits = compute_teacher_logits(teacher, TRAIN.images, "watched")
    fit(TrainingJob(cfg(GRU, epochs=2, distill=DistillConfig(alpha=0.5)), TRAIN, VALID, NORM, 0, teacher=logits),
        log=quiet)
    assert teacher.calls and not any(training for training, _ in teacher.calls)
    assert torch.equal(torch.cat([pixels for _, pixels in teacher.calls]), TRAIN.images)


def test_distillation_without_a_teacher_says_how_to_give_one():
    with pytest.raises(TrainingError, match="distill.alpha is 0.5 but no teacher was given: pass the training stage the teacher's logits"):
        train(cfg(GRU, epochs=1, distill=DistillConfig(alpha=0.5)))
    with pytest.raises(ParamsError, match="teacher's probabilities are computed once, on the unchanged"):
        build(TrainConfig, {**as_dict(cfg(GRU)), "distill": {"alpha": 0.5}, "augment": {"flip": 0.5}}, "train_lstm")


def test_augmentation_changes_what_is_learned_and_is_reproducible():
    changed = cfg(GRU, epochs=2, augment=AugmentConfig(flip=0.5, shift=1))
    a, b, plain = train(changed), train(changed), train(cfg(GRU, epochs=2))
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert [r.train_loss for r in a.history] != [r.train_loss for r in plain.history]
