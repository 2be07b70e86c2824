"""Typed, validated views of params.yaml: one dataclass per stage block.

Every block is checked once, when a stage starts, so a typo or an impossible value stops the
stage before any work with a message naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, TypeVar, Union, get_args, get_origin

from fmnist_seq.errors import ParamsError

# The models the pipeline ships (evaluated, exported): the report's two and the best row reader found since.
MODEL_NAMES: tuple[str, ...] = ("rnn", "gru", "lstm")
# What the training stage trains: the shipped models and the CNN that teaches the lstm (never shipped).
TRAINED_NAMES: tuple[str, ...] = (*MODEL_NAMES, "teacher")
ModelName = Literal[MODEL_NAMES]  # type: ignore[valid-type]  # a tuple subscript is Literal's own several-values form
PARAMS_FILE = "params.yaml"
# torch seeds are 64-bit; a worker seeds its dropout with seed + rank, so the seed stays within int64.
MAX_SEED = 2**63 - 1

T = TypeVar("T")

# How a training key bears on a run's numbers: declared once, on the fields below, and read by the snapshot key
# (snapshot.py), the keys a search may sample (search_space.py) and a study's identity (study.py).
RECIPE = "recipe"  # what is learned: in every run's key and a study's identity; a search may sample it
PER_RUN = "per_run"  # changes the numbers, but each trial sets its own (epochs, seed): in the run key only
PLACEMENT = "placement"  # where and how parallel (device, workers): the run key holds the resolved value instead
OPERATION = "operation"  # how a run is carried out, never its numbers (max_restarts): in no key


def _spec(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
          lt: float | None = None, le: float | None = None, nonempty: bool = False, pattern: str | None = None,
          role: str = RECIPE) -> Any:
    """A dataclass field whose metadata carries the range check applied when params are loaded, and its role."""
    meta = {"ge": ge, "gt": gt, "lt": lt, "le": le, "nonempty": nonempty, "pattern": pattern, "role": role}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FileSpec:
    """What one raw IDX file must be once decompressed."""

    sha256: str = _spec(pattern=r"[0-9a-f]{64}")
    count: int = _spec(ge=1, le=1_000_000)  # bounds the download's memory: Fashion-MNIST has 60,000 and 10,000


@dataclass(frozen=True)
class DownloadConfig:
    sources: list[str] = _spec(nonempty=True)
    files: dict[str, FileSpec] = _spec(nonempty=True)
    # Upper bounds: past an hour a read is not waiting but hung (and a huge timeout overflows the socket's
    # clock); retries of a dead mirror with backoff would hang the stage just the same.
    timeout_s: float = _spec(30.0, gt=0, le=3600)
    retries: int = _spec(2, ge=0, le=20)


@dataclass(frozen=True)
class PrepareConfig:
    valid_ratio: float = _spec(0.1, gt=0, lt=1)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one classifier: a sequence classifier (each image row is one time step), or a small CNN
    (`cell: cnn`), which only ever teaches one during training."""

    # cnn: num_layers blocks of 3x3 conv + BatchNorm + ReLU + 2x2 max-pool, the first hidden_size channels wide,
    # each next one twice as wide, then the all_steps head over every position of the last feature map.
    cell: Literal["rnn", "gru", "lstm", "cnn"]
    # Upper bounds far past anything that trains here: a stray zero or two stops with a message, not a
    # multi-gigabyte allocation.
    hidden_size: int = _spec(128, ge=1, le=4096)
    num_layers: int = _spec(1, ge=1, le=16)
    bidirectional: bool = False
    # all_steps: flatten every step's output -> Linear -> Dropout -> ReLU -> Linear (the report's RNN).
    # last_step: the final hidden state -> Dropout -> Linear (the report's GRU).
    # mean_steps, max_steps: every step's output averaged or max-pooled over the 28 rows -> Dropout -> Linear.
    head: Literal["all_steps", "last_step", "mean_steps", "max_steps"] = "last_step"
    head_hidden: int = _spec(512, ge=1, le=16384)
    dropout: float = _spec(0.0, ge=0, lt=1)
    layer_dropout: float = _spec(0.0, ge=0, lt=1)

    def check(self, where: str) -> None:
        if self.cell != "cnn":
            return
        if self.head != "all_steps" or self.bidirectional:
            raise ParamsError(f"params.yaml: {where}: cell cnn takes head: all_steps and bidirectional: false (a CNN "
                              f"has no steps or directions), got head {self.head}, bidirectional {self.bidirectional}")
        if self.num_layers > 4:
            raise ParamsError(f"params.yaml: {where}.num_layers = {self.num_layers} is out of range for cell cnn: "
                              "must be <= 4 (each block halves the 28-pixel side: 14, 7, 3, 1)")


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes to each training image, drawn anew every epoch; off (0) by default."""

    flip: float = _spec(0.0, ge=0, le=1)  # probability of mirroring an image left to right
    shift: int = _spec(0, ge=0, le=4)  # at most this many pixels up/down and left/right (zeros fill in)

    @property
    def enabled(self) -> bool:
        return self.flip > 0 or self.shift > 0


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation: the loss also pulls the model's softened probabilities towards a teacher's, on the
    unchanged training images. alpha 0 turns it off; the stage then needs no teacher."""

    alpha: float = _spec(0.0, ge=0, le=1)  # the teacher term's weight; the labels' is 1 - alpha
    temperature: float = _spec(4.0, gt=0, le=100)  # softening of both distributions (the term is scaled by T^2)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = _spec(1e-3, gt=0)
    weight_decay: float = _spec(0.0, ge=0)
    schedule: Literal["constant", "onecycle", "cosine"] = "constant"
    warmup: float = _spec(0.3, gt=0, lt=1)  # onecycle: share of the steps spent rising to the peak lr
    batch_size: int = _spec(128, ge=1)
    epochs: int = _spec(10, ge=1, role=PER_RUN)
    patience: int = _spec(3, ge=0)  # 0 turns early stopping off
    grad_clip: float = _spec(0.0, ge=0)  # 0 turns clipping off
    label_smoothing: float = _spec(0.0, ge=0, lt=1)
    # The training step's arithmetic (precision.py): fp32, or bf16 autocast of the forward pass with fp32 weights,
    # optimizer state and loss. Validation, selection and export stay fp32 either way. A recipe key: it changes
    # the numbers, so it is in the run key and a study's identity.
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = _spec("auto", role=PLACEMENT)
    # Data-parallel training processes: auto = one per physical core (within the CPU quota) on the CPU, one per
    # GPU on CUDA, never more than batch_size.
    # batch_size stays the global batch, split across workers, so lr keeps its meaning at any count.
    workers: Union[int, Literal["auto"]] = _spec("auto", ge=1, role=PLACEMENT)
    # With several workers: how often the launcher restarts them all after one dies (killed, out of memory);
    # they resume from the last finished epoch. 0: the first failure fails the stage.
    max_restarts: int = _spec(2, ge=0, role=OPERATION)
    # The training's own seed (initial weights, shuffling, dropout); None: the project's `seed`. The split
    # always follows the project's seed, so trials with other training seeds share one validation set.
    seed: Optional[int] = _spec(None, ge=0, le=MAX_SEED, role=PER_RUN)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def check(self, where: str) -> None:
        if isinstance(self.workers, int):
            check_workers(self.workers, self.batch_size, where)
        if self.distill.alpha > 0 and self.augment.enabled:
            raise ParamsError(f"params.yaml: {where}: distill.alpha = {self.distill.alpha} with augment on: the "
                              "teacher's probabilities are computed once, on the unchanged training images; set "
                              f"{where}.augment.flip and .shift to 0, or distill.alpha to 0")


def check_workers(workers: int, batch_size: int, where: str, resolved_from: str | None = None) -> None:
    """Each worker trains on its share of every global batch: more workers than images leaves one with none
    (an empty shard: a NaN loss). Applied to an explicit count and to the one that `auto` resolves to."""
    value = f"{workers} (resolved from {resolved_from})" if resolved_from else str(workers)
    if workers < 1:
        raise ParamsError(f"params.yaml: {where}.workers = {value} is out of range: must be >= 1")
    if workers > batch_size:
        raise ParamsError(f"params.yaml: {where}.workers = {value} is out of range: must be <= "
                          f"{where}.batch_size ({batch_size}), so that every worker gets images each step")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = _spec(1000, ge=1)
    misclassified_shown: int = _spec(24, ge=1, le=512)  # a grid figure: more would be a poster-sized PNG


@dataclass(frozen=True)
class CalibrateConfig:
    """Temperature scaling (calibration.py), fitted on the validation split, and the thresholds docs/export.md lists."""

    fit: bool = True  # false: temperature 1, the exported probabilities are softmax(logits) as before
    # The accuracies an app may ask of its answered images: per model, the lowest threshold on the calibrated top
    # probability that reaches each on the validation split (its test figures are reported beside it).
    target_accuracies: list[float] = _spec([0.95, 0.98, 0.99], nonempty=True)

    def check(self, where: str) -> None:
        for i, target in enumerate(self.target_accuracies):
            if not 0 < target <= 1:
                raise ParamsError(f"params.yaml: {where}.target_accuracies[{i}] = {target} is out of range: must be "
                                  "> 0 and <= 1 (an accuracy)")


@dataclass(frozen=True)
class ExportConfig:
    models: list[ModelName] = _spec(nonempty=True)
    exporters: dict[str, Literal["dynamo", "legacy"]] = _spec(nonempty=True)
    opset: int = _spec(18, ge=14)
    max_logit_diff: float = _spec(1e-4, gt=0)
    max_probability_diff: float = _spec(5e-5, gt=0, le=1)  # probabilities lie in [0, 1]: past 1 checks nothing
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    bench_batch_size: int = _spec(256, ge=1)
    bench_seconds: float = _spec(3.0, gt=0, le=3600)
    # Models that also get an int8 variant: quantize_dynamic shrinks MatMul/Gemm weights but leaves RNN/GRU/LSTM
    # nodes alone, so it helps the all-steps heads' large Linear and does nothing for the GRU.
    quantize: list[ModelName] = _spec([])
    quantize_max_accuracy_drop: float = _spec(0.002, ge=0, lt=1)  # on the validation split, never the test split


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join(_type_name(arg) for arg in get_args(tp))
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    bad = ParamsError(f"params.yaml: {where} = {value!r} is not valid: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if _is_union(tp):
        for option in get_args(tp):
            try:
                return _convert(value, option, where)
            except ParamsError:
                continue
        raise bad
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        _, item_tp = get_args(tp)
        return {str(k): _convert(v, item_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        try:
            number = float(value)
        except OverflowError:  # an integer past float's range (1e309 written out)
            number = math.inf
        # .inf and .nan pass every range check (nan compares false both ways): refuse them by name.
        if not math.isfinite(number):
            raise ParamsError(f"params.yaml: {where} = {value!r} is not valid: expected a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    raise TypeError(f"unsupported params type {tp!r} at {where}")


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_bounds(value, meta, where)
    if meta.get("nonempty") and len(value) == 0:
        raise ParamsError(f"params.yaml: {where} is empty: give at least one entry")
    if meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
        raise ParamsError(f"params.yaml: {where} = {value!r} does not match {meta['pattern']}")


def _check_bounds(value: float, meta: Mapping[str, Any], where: str) -> None:
    bounds = [f"{op} {meta[key]}" for key, op in (("ge", ">="), ("gt", ">"), ("lt", "<"), ("le", "<="))
              if meta.get(key) is not None]
    in_range = ((meta.get("ge") is None or value >= meta["ge"])
                and (meta.get("gt") is None or value > meta["gt"])
                and (meta.get("lt") is None or value < meta["lt"])
                and (meta.get("le") is None or value <= meta["le"]))
    if not in_range:
        raise ParamsError(f"params.yaml: {where} = {value!r} is out of range: must be "
                          + " and ".join(bounds))


def build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from the mapping `data` found at `where` in params.yaml."""
    if not isinstance(data, Mapping):
        raise ParamsError(f"params.yaml: {where} must be a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key {where}.{unknown[0]}; "
                          f"allowed keys in {where}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"params.yaml: missing key {key} ({_type_name(hints[name])})")
            continue
        value = _convert(data[name], hints[name], key)
        _check_range(value, f.metadata, key)
        kwargs[name] = value
    built = cls(**kwargs)
    check = getattr(built, "check", None)
    if check is not None:  # rules that tie several keys of one block together
        check(where)
    return built


def parse_yaml(text: str, source: str) -> Any:
    """YAML as DVC reads params (YAML 1.2, its own loader): `3e-3` is a number, `yes` a string, a repeated key
    an error. What `dvc params diff` and `dvc exp show` display is then exactly what the stages get."""
    try:
        from ruamel.yaml import YAML, YAMLError
    except ImportError:
        raise ParamsError(f"reading {source} needs DVC's YAML library: pip install dvc (requirements.txt)") from None
    try:
        # DVC's own call (its params loader adds only `or {}`, which would turn a value 0 or false into {})
        from dvc.utils.serialize import loads_yaml
    except ImportError:  # a host with PyTorch but without DVC (bench/device_timings.py): the same call
        def loads_yaml(s: str, typ: str = "safe") -> Any:
            return YAML(typ=typ).load(s)
    try:
        return loads_yaml(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        detail = (f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"  # type: ignore[attr-defined]
                  if mark is not None and getattr(exc, "problem", None) else str(exc))
        raise ParamsError(f"{source} is not valid YAML: {detail}") from None


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stage from the project root") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path} cannot be read: {exc}") from None
    params = parse_yaml(text, str(path))
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of stage blocks")
    return params


def load_block(cls: type[T], block: str, path: str | Path = PARAMS_FILE) -> T:
    """The validated config of one params.yaml block, e.g. load_block(TrainConfig, 'train_gru')."""
    params = read_params(path)
    if block not in params:
        raise ParamsError(f"params.yaml: missing block '{block}'")
    return build(cls, params[block], block)


def load_seed(path: str | Path = PARAMS_FILE) -> int:
    """The project's one seed: the split and both trainings derive their randomness from it."""
    seed = read_params(path).get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ParamsError(f"params.yaml: seed = {seed!r} is not valid: expected an integer from 0 to 2**63 - 1 "
                          f"({MAX_SEED})")
    return seed


def training_seed(cfg: TrainConfig, path: str | Path = PARAMS_FILE) -> int:
    """The seed a training run uses: its block's own `seed`, or the project's."""
    return cfg.seed if cfg.seed is not None else load_seed(path)


def load_export(path: str | Path = PARAMS_FILE) -> ExportConfig:
    cfg = load_block(ExportConfig, "export", path)
    missing = [m for m in cfg.models if m not in cfg.exporters]
    if missing:
        raise ParamsError(f"params.yaml: export.exporters has no entry for {missing[0]!r}: "
                          f"add `{missing[0]}: dynamo` (or legacy)")
    return cfg


def as_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data form of a config, for checkpoints and ONNX metadata."""
    return dataclasses.asdict(cfg)


def keys_with_role(cls: type, *roles: str, prefix: str = "") -> list[str]:
    """The dotted keys of `cls` (nested configs included) whose declared role is one of `roles`."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += keys_with_role(hints[f.name], *roles, prefix=f"{prefix}{f.name}.")
        elif f.metadata.get("role", RECIPE) in roles:
            keys.append(f"{prefix}{f.name}")
    return keys


def default_values(cls: type, prefix: str = "") -> dict[str, Any]:
    """The dotted keys of `cls` (nested configs included) that have a default, with it: what a block written
    before a key existed meant by leaving it out (a key is added with the default that keeps the old numbers)."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values.update(default_values(hints[f.name], prefix=f"{prefix}{f.name}."))
        elif f.default is not dataclasses.MISSING:
            values[f"{prefix}{f.name}"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f"{prefix}{f.name}"] = f.default_factory()
    return values


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'cell': 'gru'}} -> {'model.cell': 'gru'}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], keys: list[str] | None = None) -> list[str]:
    """`key: old -> new` for each dotted key (of `keys`, or of either mapping) whose value differs."""
    a, b = flatten(old), flatten(new)
    return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in (keys if keys is not None else sorted({*a, *b}))
            if a.get(key) != b.get(key)]


def restricted(values: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """The flat {dotted key: value} of `values` for `keys` (a key absent from `values` is left out)."""
    flat = flatten(values)
    return {key: flat[key] for key in keys if key in flat}

