import copy

import pytest
import yaml

from conftest import ROOT
from fmnist_seq.config import (MODEL_NAMES, DownloadConfig, EvaluateConfig, ExportConfig, PrepareConfig,
                               TrainConfig, as_dict, build, load_block, load_export, load_seed,
                               training_seed)
from fmnist_seq.errors import ParamsError

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_load_and_spell_out_every_key():
    """The committed params.yaml is valid, and lists every key (no silent defaults), whatever its values."""
    blocks = {"download": DownloadConfig, "prepare": PrepareConfig, "train_rnn": TrainConfig,
              "train_gru": TrainConfig, "evaluate": EvaluateConfig, "export": ExportConfig}
    for block, cls in blocks.items():
        cfg = build(cls, PARAMS[block], block)
        written = PARAMS[block]
        assert set(written) == set(as_dict(cfg)), f"{block} should list every key explicitly"
        if cls is TrainConfig:
            assert set(written["model"]) == set(as_dict(cfg.model)), f"{block}.model should list every key"
            assert cfg.model.cell == block.removeprefix("train_")  # each block trains its own model
    load_seed(ROOT / "params.yaml")
    assert set(build(ExportConfig, PARAMS["export"], "export").models) <= set(MODEL_NAMES)


def _train(**changes):
    block = copy.deepcopy(PARAMS["train_gru"])
    for dotted, value in changes.items():
        target = block
        *parents, leaf = dotted.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return build(TrainConfig, block, "train_gru")


@pytest.mark.parametrize("changes, fragment", [
    ({"model__hidden_size": 0}, "train_gru.model.hidden_size = 0 is out of range: must be >= 1"),
    ({"epochs": 0}, "train_gru.epochs = 0 is out of range"),
    ({"optimizer": "adagrad"}, "train_gru.optimizer = 'adagrad' is not valid: expected one of 'adam', 'adamw', 'sgd'"),
    ({"model__cell": "transformer"}, "train_gru.model.cell = 'transformer' is not valid: expected one of 'rnn', 'gru', 'lstm'"),
    ({"lr": "fast"}, "train_gru.lr = 'fast' is not valid: expected a number"),
    ({"batch_size": 12.5}, "train_gru.batch_size = 12.5 is not valid: expected an integer"),
    ({"model__bidirectional": "yes"}, "expected true or false"),
    ({"label_smoothing": 1.0}, "must be >= 0 and < 1"),
    ({"warmup": 1.0}, "train_gru.warmup = 1.0 is out of range: must be > 0 and < 1"),
    ({"workers": 0}, "train_gru.workers = 0 is out of range: must be >= 1"),
    ({"workers": -2}, "train_gru.workers = -2 is out of range: must be >= 1"),
    ({"workers": "many"}, "train_gru.workers = 'many' is not valid: expected an integer or one of 'auto'"),
    ({"workers": 4, "batch_size": 3}, "train_gru.workers = 4 is out of range: must be <= train_gru.batch_size (3)"),
    ({"model__head": "attention"}, "train_gru.model.head = 'attention' is not valid: expected one of 'all_steps'"),
    ({"model__dropout": -0.1}, "train_gru.model.dropout = -0.1 is out of range: must be >= 0 and < 1"),
    ({"precision": "fp16"}, "train_gru.precision = 'fp16' is not valid: expected one of 'fp32', 'bf16'"),
    ({"precision": "bfloat16"}, "train_gru.precision = 'bfloat16' is not valid: expected one of 'fp32', 'bf16'"),
])
def test_bad_train_values_name_key_value_and_rule(changes, fragment):
    with pytest.raises(ParamsError) as err:
        _train(**changes)
    assert fragment in str(err.value)


def test_unknown_key_is_rejected_with_allowed_keys():
    block = {**PARAMS["train_gru"], "learning_rate": 0.1}
    with pytest.raises(ParamsError, match=r"unknown key train_gru\.learning_rate; allowed keys in train_gru: model, optimizer"):
        build(TrainConfig, block, "train_gru")


def test_missing_required_key():
    block = {k: v for k, v in PARAMS["train_gru"].items() if k != "model"}
    with pytest.raises(ParamsError, match="missing key train_gru.model"):
        build(TrainConfig, block, "train_gru")


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_valid_ratio_must_lie_strictly_between_0_and_1(ratio):
    with pytest.raises(ParamsError, match=f"prepare.valid_ratio = {ratio}"):
        build(PrepareConfig, {"valid_ratio": ratio}, "prepare")


def test_empty_source_list_and_bad_hash():
    block = copy.deepcopy(PARAMS["download"])
    block["sources"] = []
    with pytest.raises(ParamsError, match="download.sources is empty"):
        build(DownloadConfig, block, "download")
    block = copy.deepcopy(PARAMS["download"])
    block["files"]["train-images-idx3-ubyte"]["sha256"] = "abc"
    with pytest.raises(ParamsError, match="sha256 = 'abc' does not match"):
        build(DownloadConfig, block, "download")


def test_load_block_seed_and_export_from_file(tmp_path):
    params = copy.deepcopy(PARAMS)
    params["export"]["exporters"] = {"rnn": "dynamo"}
    params["seed"] = -3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_block(PrepareConfig, "prepare", path).valid_ratio == 0.1
    with pytest.raises(ParamsError, match="export.exporters has no entry for 'lstm'"):
        load_export(path)
    with pytest.raises(ParamsError, match="seed = -3"):
        load_seed(path)
    with pytest.raises(ParamsError, match="missing block 'nope'"):
        load_block(PrepareConfig, "nope", path)
    path.write_text("seed: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_seed(path)


def test_a_training_block_may_carry_its_own_seed(tmp_path):
    # fmnist-tune's trials train with seeds of their own; the split keeps following the project's seed
    params = copy.deepcopy(PARAMS)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert PARAMS["train_gru"]["seed"] is None
    assert training_seed(load_block(TrainConfig, "train_gru", path), path) == PARAMS["seed"]
    params["train_gru"]["seed"] = 7
    path.write_text(yaml.safe_dump(params))
    assert training_seed(load_block(TrainConfig, "train_gru", path), path) == 7
    for bad in (-1, 2**63, "7", 1.5):
        params["train_gru"]["seed"] = bad
        path.write_text(yaml.safe_dump(params))
        with pytest.raises(ParamsError, match="train_gru.seed"):
            load_block(TrainConfig, "train_gru", path)


def test_workers_accepts_auto_and_numbers():
    assert _train(workers="auto").workers == "auto"
    assert _train(workers=2).workers == 2


# --- params.yaml is read as DVC reads it, and every number is finite ---------------------------------------

def _params_text(tmp_path, replacements: dict[str, str]):
    """The project's params.yaml with some lines rewritten as a user types them (YAML text, not PyYAML's dump)."""
    text = (ROOT / "params.yaml").read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_numbers_read_as_dvc_reads_them(tmp_path):
    """`3e-3`, `1e3` and `.5` are numbers in YAML 1.2 (DVC's reading, shown by `dvc params diff`); PyYAML's
    YAML 1.1 reads the first two as strings."""
    from dvc.utils.serialize import load_yaml

    path = _params_text(tmp_path, {"  lr: 0.003\n": "  lr: 3e-3\n", "  warmup: 0.1  #": "  warmup: .5  #",
                                   "  weight_decay: 0.01\n  schedule: onecycle\n  warmup: .5":
                                   "  weight_decay: 1e3\n  schedule: onecycle\n  warmup: .5"})
    cfg = load_block(TrainConfig, "train_gru", path)
    assert (cfg.lr, cfg.weight_decay, cfg.warmup) == (0.003, 1000.0, 0.5)
    assert load_yaml(str(path))["train_gru"]["lr"] == cfg.lr  # what DVC itself reads from the same file


def test_yaml_1_1_booleans_and_repeated_keys_are_errors(tmp_path):
    path = _params_text(tmp_path, {"bidirectional: false": "bidirectional: no"})
    with pytest.raises(ParamsError, match=r"train_gru.model.bidirectional = 'no' is not valid: expected true or false"):
        load_block(TrainConfig, "train_gru", path)
    path = _params_text(tmp_path, {"  lr: 0.003\n": "  lr: 0.003\n  lr: 0.004\n"})
    with pytest.raises(ParamsError, match=r"params.yaml is not valid YAML: found duplicate key \"lr\".*line \d+"):
        load_block(TrainConfig, "train_gru", path)


LOADERS = {"download": lambda path: load_block(DownloadConfig, "download", path), "export": load_export,
           "train_gru": lambda path: load_block(TrainConfig, "train_gru", path)}


@pytest.mark.parametrize("block, line, typed, key", [
    ("download", "timeout_s: 30", "timeout_s: .inf", "download.timeout_s"),
    ("export", "bench_seconds: 4.0", "bench_seconds: .inf", "export.bench_seconds"),
    ("export", "max_logit_diff: 0.0001", "max_logit_diff: .inf", "export.max_logit_diff"),
    ("export", "max_logit_diff: 0.0001", "max_logit_diff: .nan", "export.max_logit_diff"),
    ("export", "max_probability_diff: 0.00005", "max_probability_diff: .nan", "export.max_probability_diff"),
    ("train_gru", "  lr: 0.003", "  lr: -.inf", "train_gru.lr"),
    ("train_gru", "  grad_clip: 1.0", "  grad_clip: .NaN", "train_gru.grad_clip"),
    ("train_gru", "  lr: 0.003", "  lr: " + "9" * 400, "train_gru.lr"),  # an integer past float's range
])
def test_non_finite_numbers_are_rejected_by_name(tmp_path, block, line, typed, key):
    with pytest.raises(ParamsError, match=rf"params.yaml: {key} = .* is not valid: expected a finite number"):
        LOADERS[block](_params_text(tmp_path, {line: typed}))


@pytest.mark.parametrize("block, line, typed, fragment", [
    ("download", "timeout_s: 30", "timeout_s: 1e30", "download.timeout_s = 1e+30 is out of range: must be > 0 and <= 3600"),
    ("download", "retries: 2", "retries: 1000000", "download.retries = 1000000 is out of range: must be >= 0 and <= 20"),
    ("export", "bench_seconds: 4.0", "bench_seconds: 1e9", "export.bench_seconds = 1000000000.0 is out of range"),
    ("train_gru", "hidden_size: 128\n    num_layers: 2", "hidden_size: 128000\n    num_layers: 2",
     "train_gru.model.hidden_size = 128000 is out of range: must be >= 1 and <= 4096"),
])
def test_values_that_would_hang_or_exhaust_memory_are_out_of_range(tmp_path, block, line, typed, fragment):
    with pytest.raises(ParamsError) as err:
        LOADERS[block](_params_text(tmp_path, {line: typed}))
    assert fragment in str(err.value)


@pytest.mark.parametrize("typed, fragment", [
    ("max_probability_diff: 0", "export.max_probability_diff = 0.0 is out of range: must be > 0 and <= 1"),
    ("max_probability_diff: 1.5", "export.max_probability_diff = 1.5 is out of range: must be > 0 and <= 1"),
])
def test_parity_tolerances_are_in_range(tmp_path, typed, fragment):
    """A probability lies in [0, 1]: a tolerance past 1 would check nothing, and 0 fails on float rounding."""
    with pytest.raises(ParamsError) as err:
        load_export(_params_text(tmp_path, {"max_probability_diff: 0.00005": typed}))
    assert fragment in str(err.value)


@pytest.mark.parametrize("seed", [2**63, 2**64, -1, 1.5, "2026"])
def test_seed_outside_what_torch_takes_is_a_params_error(tmp_path, seed):
    path = _params_text(tmp_path, {"seed: 2026": f"seed: {seed!r}"})
    with pytest.raises(ParamsError, match=r"seed = .* is not valid: expected an integer from 0 to 2\*\*63 - 1"):
        load_seed(path)


def test_largest_seed_is_accepted_by_torch(tmp_path):
    import torch

    seed = load_seed(_params_text(tmp_path, {"seed: 2026": f"seed: {2**63 - 1}"}))
    torch.Generator().manual_seed(seed + 7)  # a worker's seed (seed + rank) too
