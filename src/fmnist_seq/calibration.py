"""Temperature scaling: one temperature per model, fitted on the validation split's logits by minimum NLL.

An exported file's probabilities are softmax(logits / T). One scalar cannot change which class is largest, so
accuracy stays what it was; it only makes the top probability mean what it says (see uncertainty.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fmnist_seq.errors import CalibrationError
from fmnist_seq.uncertainty import answered_at, expected_calibration_error, threshold_for

# A fitted temperature outside this range means the logits say (almost) nothing about the labels (T far above 1)
# or the model is wildly under-confident (far below): a broken checkpoint or split, not something to ship.
TEMPERATURE_RANGE = (0.05, 20.0)
# The search runs on log T over a wider bracket, so that a fit past TEMPERATURE_RANGE is seen as such.
_SEARCH = (math.log(0.01), math.log(100.0))
_GOLDEN = (math.sqrt(5) - 1) / 2


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    scaled = np.asarray(logits, np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def check_calibration_split(name: str, logits: np.ndarray, labels: np.ndarray, split: str = "valid") -> None:
    """Refuse logits and labels that no temperature can be fitted on, naming the model and the fix."""
    if len(labels) == 0 or logits.shape != (len(labels), logits.shape[-1]):
        raise CalibrationError(f"{name}: {len(labels)} {split} labels for logits of shape {tuple(logits.shape)}")
    bad = int((~np.isfinite(logits)).sum())
    if bad:
        raise CalibrationError(f"{name}: {bad} of its {split} logits are NaN or inf, so no temperature can be "
                               f"fitted: the checkpoint is broken; retrain it (dvc repro train_{name})")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise CalibrationError(f"{name}: the {split} split holds only class {int(classes[0])} ({len(labels)} images): "
                               "a temperature fitted on one class says nothing about the others; rebuild the split "
                               "(dvc repro prepare, prepare.valid_ratio)")


def fit_temperature(name: str, logits: np.ndarray, labels: np.ndarray, split: str = "valid") -> float:
    """The temperature T that minimises the NLL of softmax(logits / T) on `labels`.

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search finds its minimum to float
    precision, deterministically, without a learning rate or a starting point to tune.
    """
    check_calibration_split(name, logits, labels, split)
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    low, high = _SEARCH
    a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    while high - low > 1e-9:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - _GOLDEN * (high - low)
            fa = nll(logits, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + _GOLDEN * (high - low)
            fb = nll(logits, labels, math.exp(b))
    temperature = math.exp((low + high) / 2)
    lowest, highest = TEMPERATURE_RANGE
    if not lowest < temperature < highest:
        # Far below: the NLL kept falling as T shrank, which happens when (nearly) every image of the split is
        # already right: a split too small or too easy to say how confident the model should be.
        why = ("its logits barely predict the labels" if temperature >= highest else
               f"the model gets {np.mean(logits.argmax(1) == labels):.1%} of its {len(labels)} images right, so "
               "sharpening never stops paying: the split is too small or too easy to calibrate on, or the logits "
               "are far too flat")
        raise CalibrationError(
            f"{name}: the temperature fitted on the {split} split is {temperature:.3g}, outside ({lowest:g}, "
            f"{highest:g}): {why}; check the checkpoint (dvc repro train_{name}) and the split, or set "
            "calibrate.fit: false")
    return temperature


def calibrated_on_validation(name: str, logits: np.ndarray, labels: np.ndarray, fit: bool,
                             targets: list[float]) -> tuple[dict[str, float], dict[str, dict]]:
    """A model's temperature (1 when `fit` is off) with its validation NLL and calibration error before and after,
    and per target accuracy the threshold an app may use, with the share and accuracy it answers on validation."""
    check_calibration_split(name, logits, labels)
    temperature = fit_temperature(name, logits, labels) if fit else 1.0
    before, after = softmax(logits), softmax(logits, temperature)
    figures = {"temperature": temperature, "valid_nll": nll(logits, labels), "valid_nll_calibrated":
               nll(logits, labels, temperature), "valid_ece": expected_calibration_error(before, labels),
               "valid_ece_calibrated": expected_calibration_error(after, labels)}
    thresholds = {}
    for target in targets:
        threshold = threshold_for(after, labels, target)
        answered = answered_at(after, labels, threshold) if threshold is not None else {"coverage": 0.0, "accuracy": None}
        thresholds[f"{target:g}"] = {"threshold": threshold, "valid_coverage": answered["coverage"],
                                     "valid_accuracy": answered["accuracy"]}
    return figures, thresholds


def load_temperatures(path: str | Path, names: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Each model's temperature from the calibrate stage's metrics file, checked for every model in `names`."""
    path = Path(path)
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path} not found: run the calibrate stage first (dvc repro calibrate)") from None
    except ValueError as exc:
        raise CalibrationError(f"{path} is not JSON ({exc}): rerun dvc repro calibrate") from None
    temperatures = {}
    for name in names:
        value = found.get(name, {}).get("temperature") if isinstance(found.get(name), dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise CalibrationError(f"{path} has no temperature for {name}: rerun dvc repro calibrate")
        temperatures[name] = float(value)
    return temperatures
