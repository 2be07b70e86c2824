"""The tune block: validated before any trial, against the training block it searches."""

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from fmnist_seq.config import MODEL_NAMES, TrainConfig, build, parse_yaml, read_params
from fmnist_seq.errors import ParamsError
from fmnist_seq.search_space import apply, build_tune, load_tune, sample
from fmnist_seq.study import trial_block, trial_settings

ROOT = Path(__file__).resolve().parents[1]
TUNE = read_params(ROOT / "params.yaml")["tune"]


def with_space(params: dict) -> dict:
    tune = copy.deepcopy(TUNE)
    tune["spaces"] = {"gru": {"model": "gru", "params": params}}
    return tune


def test_the_committed_tune_block_is_valid_and_searches_every_shipped_model():
    cfg = load_tune(read_params(ROOT / "params.yaml"))
    assert {space.model for space in cfg.spaces.values()} == set(MODEL_NAMES)
    assert cfg.storage.endswith(".log")  # the journal file: no database needed for --jobs 2


@pytest.mark.parametrize("params, message", [
    ({"lr": {"low": 0.01, "high": 0.001}}, "empty range"),
    ({"lr": {"low": 0.001, "high": 0.001}}, "empty range"),
    ({"lr": {"low": 0.0, "high": 0.01, "log": True}}, "log scale"),
    ({"learning_rate": {"low": 0.001, "high": 0.01}}, "'learning_rate', which the training block does not have"),
    ({"model.width": {"choices": [64, 128]}}, "'width', which the training block does not have"),
    ({"batch_size": {"choices": []}}, "choices is empty"),
    ({"batch_size": {"choices": [64, 64]}}, "repeats a value"),
    ({"batch_size": {"low": 32.5, "high": 64}}, "integer"),
    ({"model.head": {"low": 1, "high": 2}}, "not a number"),
    ({"lr": {"low": 0.001}}, "needs `low` and `high`"),
    ({"lr": {"low": 0.001, "high": 0.01, "choices": [0.1]}}, "both choices and a range"),
    ({"epochs": {"low": 1, "high": 20}}, "set by each trial"),
    ({"seed": {"choices": [1, 2]}}, "set by each trial"),
    ({"lr": {"low": 0.001, "high": 0.01, "scale": "log"}}, "unknown key tune.spaces.gru.params.lr.scale"),
])
def test_a_bad_space_is_a_params_error_naming_the_key(params, message):
    with pytest.raises(ParamsError, match="tune.spaces.gru.params") as caught:
        build_tune(with_space(params))
    assert message in str(caught.value)


@pytest.mark.parametrize("change, message", [
    ({"pruner": {"name": "asha"}}, "tune.pruner.name"),
    ({"sampler": {"name": "cmaes"}}, "tune.sampler.name"),
    ({"trials": 0}, "tune.trials"),
    ({"epochs": float("inf")}, "tune.epochs"),
    ({"spaces": {}}, "tune.spaces"),
    ({"spaces": {"gru": {"model": "cnn", "params": {"lr": {"low": 0.1, "high": 1}}}}}, "tune.spaces.gru.model"),
    ({"budget": 3}, "unknown key tune.budget"),
])
def test_bad_settings_are_params_errors(change, message):
    tune = copy.deepcopy(TUNE)
    tune.update(change)
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        build_tune(tune)


def test_yaml_numbers_read_as_dvc_reads_them():
    # `3e-3` is a number for DVC (YAML 1.2); the tune block reads params.yaml the same way
    tune = parse_yaml("spaces: {gru: {model: gru, params: {lr: {low: 5e-4, high: 1e-2, log: true}}}}", "t")
    dim = build_tune(tune).spaces["gru"].params["lr"]
    assert (dim.low, dim.high, dim.log) == (5e-4, 1e-2, True)


def test_samples_respect_each_key_type_and_apply_to_a_copy_of_the_block():
    cfg = build_tune(with_space({"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                 "model.num_layers": {"low": 1, "high": 3},
                                 "model.bidirectional": {"choices": [False, True]},
                                 "warmup": {"low": 0.1, "high": 0.3, "step": 0.1}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), direction="maximize")
    base = read_params(ROOT / "params.yaml")["train_gru"]
    before = copy.deepcopy(base)
    for _ in range(8):
        trial = study.ask()
        values = sample(trial, cfg.spaces["gru"])
        assert 1e-4 <= values["lr"] <= 1e-2 and isinstance(values["lr"], float)
        assert values["model.num_layers"] in (1, 2, 3) and isinstance(values["model.num_layers"], int)
        assert isinstance(values["model.bidirectional"], bool)
        assert min(abs(values["warmup"] - w) for w in (0.1, 0.2, 0.3)) < 1e-9
        block = trial_block(base, values, trial_settings(cfg, trial.number, "cpu"))
        built = build(TrainConfig, block, "train_gru")  # a valid block, as the training stage reads it
        assert built.model.num_layers == values["model.num_layers"] and built.lr == values["lr"]
        assert (built.seed, built.epochs, built.workers, built.device) == (cfg.seed + trial.number, cfg.epochs, 1,
                                                                           "cpu")
        study.tell(trial, 0.5)
    assert base == before  # the base block is never modified


def test_apply_sets_dotted_keys():
    assert apply({"lr": 1, "model": {"dropout": 0.1, "cell": "gru"}}, {"model.dropout": 0.3, "lr": 2}) == \
        {"lr": 2, "model": {"dropout": 0.3, "cell": "gru"}}


def test_params_yaml_tune_block_is_not_read_by_any_stage():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert not any(str(p).startswith("tune") for p in stage.get("params", [])), name
