"""How far a model's probabilities can be trusted: calibration error, NLL and Brier score, the reliability bins
behind them, and what a confidence threshold buys (the share answered and the accuracy of the answers).

All of it works on probabilities (N, classes) and labels (N,) in numpy; `confidence` is the top probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Expected calibration error: 15 equal-width bins of the top probability, bin i holding (i/15, (i+1)/15]
# (the first also holds 0), each bin's |accuracy - mean confidence| weighted by its share of the images.
ECE_BINS = 15


def confidence(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities, np.float64).max(axis=1)


def correct(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    confidence: float  # mean top probability of the bin's images (NaN when empty)
    accuracy: float  # share of them predicted right (NaN when empty)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    conf, right = confidence(probabilities), correct(probabilities, labels)
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    found = []
    for i in range(bins):
        members = index == i
        count = int(members.sum())
        found.append(ReliabilityBin(i / bins, (i + 1) / bins, count,
                                    float(conf[members].mean()) if count else math.nan,
                                    float(right[members].mean()) if count else math.nan))
    return found


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    total = len(labels)
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in reliability_bins(probabilities, labels, bins)
                     if b.count))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class); a probability of 0 counts as the smallest positive float64, not infinity."""
    p = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(p, np.finfo(np.float64).tiny)).mean())


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over images of the squared distance between the probabilities and the one-hot label (0 to 2)."""
    p = np.asarray(probabilities, np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def calibration_measures(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"ece": expected_calibration_error(probabilities, labels),
            "nll": negative_log_likelihood(probabilities, labels),
            "brier": brier_score(probabilities, labels)}


def risk_coverage(probabilities: np.ndarray, labels: np.ndarray, levels: int = 100) -> list[dict[str, float]]:
    """As the threshold rises, fewer images are answered: at each coverage k/levels (the most confident images
    first), the accuracy of the answered ones and the threshold (lowest answered confidence) that gives it."""
    conf, right = confidence(probabilities), correct(probabilities, labels)
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(right[order])
    rows = []
    for k in range(1, levels + 1):
        answered = max(1, round(k / levels * len(labels)))
        rows.append({"coverage": answered / len(labels), "accuracy": float(hits[answered - 1] / answered),
                     "threshold": float(conf[order][answered - 1])})
    return rows


def answered_at(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """What an app gets when it answers only where the top probability is at least `threshold`."""
    answered = confidence(probabilities) >= threshold
    count = int(answered.sum())
    return {"coverage": count / len(labels),
            "accuracy": float(correct(probabilities, labels)[answered].mean()) if count else None}


def threshold_for(probabilities: np.ndarray, labels: np.ndarray, target: float) -> float | None:
    """The lowest threshold on the top probability whose answered images are at least `target` right (the one
    that answers most), or None when even the most confident image alone misses it."""
    conf, right = confidence(probabilities), correct(probabilities, labels)
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    accuracy = np.cumsum(right[order]) / np.arange(1, len(conf) + 1)
    # A threshold answers every image at or above it: only the last of a run of equal confidences is a cut.
    cut = np.append(sorted_conf[1:] != sorted_conf[:-1], True)
    reached = np.nonzero(cut & (accuracy >= target))[0]
    return float(sorted_conf[reached[-1]]) if len(reached) else None


def thresholds_tested(chosen: dict[str, dict], probabilities: np.ndarray, labels: np.ndarray,
                      split: str = "test") -> dict[str, dict]:
    """Thresholds chosen on another split ({target: {"threshold": t or None, ...}}), each with the share of these
    images it answers and their accuracy."""
    tested = {}
    for target, figures in chosen.items():
        threshold = figures["threshold"]
        answered = (answered_at(probabilities, labels, threshold) if threshold is not None
                    else {"coverage": 0.0, "accuracy": None})
        tested[target] = {**figures, **{f"{split}_{key}": value for key, value in answered.items()}}
    return tested
