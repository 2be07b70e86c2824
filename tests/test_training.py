import math

import pytest
import torch

from conftest import easy_split
from fmnist_seq.checkpoint import load_checkpoint, save_checkpoint
from fmnist_seq.config import ModelConfig, TrainConfig
from fmnist_seq.data import Normalization, Split
from fmnist_seq.errors import CheckpointError, TrainingError
from fmnist_seq.models import SequenceClassifier, count_parameters, forward_flops
from fmnist_seq.training import EarlyStopping, fit


RNN = ModelConfig(cell="rnn", hidden_size=16, num_layers=1, bidirectional=True, head="all_steps", head_hidden=32,
                  dropout=0.1)
GRU = ModelConfig(cell="gru", hidden_size=16, num_layers=2, head="last_step", dropout=0.1)


TRAIN, VALID = easy_split(20, 0), easy_split(5, 1)


def cfg(model: ModelConfig, **overrides) -> TrainConfig:
    base = dict(model=model, optimizer="adamw", lr=0.01, schedule="onecycle", batch_size=32, epochs=4, patience=0,
                grad_clip=1.0, label_smoothing=0.05, device="cpu")
    return TrainConfig(**{**base, **overrides})


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("model", [RNN, GRU], ids=["rnn", "gru"])
def test_trained_model_beats_chance_clearly(model):
    result = fit(cfg(model, epochs=6), TRAIN, VALID, seed=0, log=quiet)
    assert result.selected.valid_accuracy >= 0.6  # chance is 0.1
    assert result.selected_epoch == min(range(1, 7), key=lambda e: result.history[e - 1].valid_loss)


def test_training_is_deterministic_on_cpu():
    a = fit(cfg(GRU, epochs=2), TRAIN, VALID, seed=5, log=quiet)
    b = fit(cfg(GRU, epochs=2), TRAIN, VALID, seed=5, log=quiet)
    assert [r.valid_loss for r in a.history] == [r.valid_loss for r in b.history]
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k
    c = fit(cfg(GRU, epochs=2), TRAIN, VALID, seed=6, log=quiet)
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
    result = fit(cfg(GRU, epochs=8, patience=1, lr=0.2, schedule="constant", optimizer="sgd"), TRAIN, VALID,
                 seed=0, log=quiet)
    losses = [r.valid_loss for r in result.history]
    assert result.selected_epoch == losses.index(min(losses)) + 1
    logits = result.model.eval()(VALID.images)
    loss = torch.nn.functional.cross_entropy(logits, VALID.labels).item()
    assert loss == pytest.approx(result.selected.valid_loss, rel=1e-4)


def test_non_finite_loss_stops_with_epoch_and_step():
    bad = Split(images=TRAIN.images.clone(), labels=TRAIN.labels, source_index=TRAIN.source_index)
    bad.images[40, 3, 3] = math.nan
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step \d+"):
        fit(cfg(GRU, epochs=1), bad, VALID, seed=0, log=quiet)


def test_model_shapes_flops_and_parameters():
    x = torch.zeros(3, 28, 28)
    for model_cfg in (RNN, GRU, ModelConfig(cell="gru", hidden_size=8, bidirectional=True, num_layers=2)):
        assert SequenceClassifier(model_cfg)(x).shape == (3, 10)
    report_rnn = ModelConfig(cell="rnn", hidden_size=128, bidirectional=True, head="all_steps", head_hidden=512)
    report_gru = ModelConfig(cell="gru", hidden_size=128, num_layers=2)
    assert count_parameters(SequenceClassifier(report_rnn)) == 3_716_106
    assert round(forward_flops(report_rnn) / 1e6, 1) == 9.6
    assert round(forward_flops(report_gru) / 1e6, 1) == 8.9


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    result = fit(cfg(GRU, epochs=1), TRAIN, VALID, seed=0, log=quiet)
    path = tmp_path / "gru.pt"
    save_checkpoint(path, result, cfg(GRU, epochs=1), Normalization(0.2, 0.3))
    ckpt = load_checkpoint(path, GRU)
    assert ckpt.selected_epoch == 1 and ckpt.normalization == Normalization(0.2, 0.3)
    assert ckpt.valid["accuracy"] == result.selected.valid_accuracy
    assert torch.equal(ckpt.model(VALID.images[:4]), result.model.eval()(VALID.images[:4]))
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
    torch.save(blob, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="old.pt is not a checkpoint of this project"):
        load_checkpoint(tmp_path / "old.pt")


def test_cublas_workspace_is_fixed_for_deterministic_cuda_matmuls():
    # Without it, deterministic mode on CUDA cannot make cuBLAS reproducible; it must be set before any
    # CUDA matmul, which importing the training module guarantees for the stages.
    import os

    import fmnist_seq.training  # noqa: F401

    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
