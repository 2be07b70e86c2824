"""The `tune` block of params.yaml: what fmnist-tune searches, and how.

No pipeline stage reads this block (editing it reruns nothing). It is validated once, before any trial,
against the training block it searches: a key that block does not have, an empty range or an unknown
setting stops `fmnist-tune` with a message naming the key. A sampled value that the training block's own
checks refuse later is a failed trial, not a crash.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Union

from fmnist_seq.config import MAX_SEED, RECIPE, ModelName, TrainConfig, _spec, build, keys_with_role, read_params
from fmnist_seq.errors import ParamsError

# What a trial may sample: the recipe (config.RECIPE). The rest a trial sets itself (epochs from tune.epochs, seed
# from the trial number, one worker) or bears on where and how a run is carried out, not on what it learns.
SEARCHABLE = tuple(keys_with_role(TrainConfig, RECIPE))
Value = Union[bool, int, float, str]


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range (low..high, on a log scale if `log`) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = _spec(None, gt=0)  # grid step within the range (an integer key's default is 1)
    choices: list[Value] | None = None


@dataclass(frozen=True)
class Space:
    model: ModelName  # which block it searches: train_<model>
    params: dict[str, Dimension] = _spec(nonempty=True)  # key within train_<model> (model.dropout) -> range


@dataclass(frozen=True)
class SamplerConfig:
    name: Literal["tpe", "random"] = "tpe"
    startup_trials: int = _spec(10, ge=0)  # TPE: random trials before it models the finished ones


@dataclass(frozen=True)
class PrunerConfig:
    name: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = _spec(5, ge=0)  # median: finished trials needed before it prunes any
    warmup_epochs: int = _spec(2, ge=0)  # median: epochs every trial runs before it may be pruned
    min_epochs: int = _spec(1, ge=1)  # hyperband: the smallest budget of a bracket
    reduction_factor: int = _spec(3, ge=2)  # hyperband


@dataclass(frozen=True)
class TuneConfig:
    seed: int = _spec(2026, ge=0, le=MAX_SEED)  # the sampler's seed; trial n trains with seed + n
    trials: int = _spec(30, ge=1, le=100_000)  # trials per `fmnist-tune` run unless --trials
    epochs: int = _spec(10, ge=1, le=1000)  # a trial's training epochs at most
    # Optuna journal file (several processes on one machine share it safely), or a database URL
    # (postgresql://...) that processes on many machines share.
    storage: str = _spec(".optuna/journal.log", nonempty=True)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    pruner: PrunerConfig = dataclasses.field(default_factory=PrunerConfig)
    spaces: dict[str, Space] = _spec({}, nonempty=True)

    def check(self, where: str) -> None:
        if self.seed + 100_000 > MAX_SEED:
            raise ParamsError(f"params.yaml: {where}.seed = {self.seed} is too large: trial seeds are seed + trial "
                              f"number and must stay below 2**63 - 1")


def _field_type(cls: type, path: list[str], where: str) -> Any:
    """The type of the field at `path` in dataclass `cls`, e.g. ['model', 'dropout'] -> float."""
    hints = typing.get_type_hints(cls)
    name, rest = path[0], path[1:]
    if name not in hints:
        raise ParamsError(f"params.yaml: {where} names {name!r}, which the training block does not have; "
                          f"keys there: {', '.join(hints)}")
    tp = hints[name]
    if rest:
        if not dataclasses.is_dataclass(tp):
            raise ParamsError(f"params.yaml: {where}: {name} is not a mapping of keys")
        return _field_type(tp, rest, where)
    return tp


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_dimension(key: str, dim: Dimension, tp: Any, where: str) -> None:
    """Refuse what could never sample a value: an empty or reversed range, a log range through zero, no choices,
    a range for a key that is not a number."""
    if dim.choices is not None:
        if dim.low is not None or dim.high is not None or dim.log or dim.step is not None:
            raise ParamsError(f"params.yaml: {where} has both choices and a range: give one of them")
        if not dim.choices:
            raise ParamsError(f"params.yaml: {where}.choices is empty: list at least one value")
        if len(set(map(repr, dim.choices))) != len(dim.choices):
            raise ParamsError(f"params.yaml: {where}.choices repeats a value: {dim.choices}")
        return
    if dim.low is None or dim.high is None:
        raise ParamsError(f"params.yaml: {where} needs `low` and `high` (a range) or `choices` (a list)")
    if tp not in (int, float):
        raise ParamsError(f"params.yaml: {where}: {key} is not a number, so it takes `choices`, not a range")
    if not dim.low < dim.high:
        raise ParamsError(f"params.yaml: {where} is an empty range: low ({dim.low}) must be below high ({dim.high})")
    if dim.log and dim.low <= 0:
        raise ParamsError(f"params.yaml: {where} is on a log scale, so low ({dim.low}) must be above 0")
    if dim.log and dim.step is not None:
        raise ParamsError(f"params.yaml: {where} has both log and step: Optuna samples one or the other")
    if tp is int and not all(float(v).is_integer() for v in (dim.low, dim.high, dim.step or 1)):
        raise ParamsError(f"params.yaml: {where}: {key} is an integer, so low, high and step must be integers")


def build_tune(data: Any) -> TuneConfig:
    cfg = build(TuneConfig, data, "tune")
    for name, space in cfg.spaces.items():
        for key, dim in space.params.items():
            where = f"tune.spaces.{name}.params.{key}"
            path = key.split(".")
            tp = _field_type(TrainConfig, path, where)  # first: an unknown key is named as unknown
            if key not in SEARCHABLE:
                raise ParamsError(f"params.yaml: {where}: {key} is set by each trial or by where it runs, not "
                                  f"searched (searchable: {', '.join(SEARCHABLE)})")
            check_dimension(key, dim, tp, where)
    return cfg


def load_tune(params: Mapping[str, Any] | None = None) -> TuneConfig:
    params = read_params() if params is None else params
    if "tune" not in params:
        raise ParamsError("params.yaml: missing block 'tune' (the search spaces of fmnist-tune, docs/tuning.md)")
    return build_tune(params["tune"])


def sample(trial: Any, space: Space) -> dict[str, Value]:
    """One value per searched key, drawn by the study's sampler (`trial` is an optuna.Trial)."""
    values: dict[str, Value] = {}
    for key, dim in space.params.items():
        tp = _field_type(TrainConfig, key.split("."), key)
        if dim.choices is not None:
            values[key] = trial.suggest_categorical(key, list(dim.choices))
        elif tp is int:
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            values[key] = trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)
    return values


def apply(block: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a training block with `values` set at their dotted keys."""
    result = copy.deepcopy(dict(block))
    for key, value in values.items():
        *parents, leaf = key.split(".")
        target = result
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return result

