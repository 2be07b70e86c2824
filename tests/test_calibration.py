"""Temperature scaling (calibration.py) and the measures of trust in probabilities (uncertainty.py)."""

import json
import math

import numpy as np
import pytest

from fmnist_seq.calibration import (calibrated_on_validation, fit_temperature, load_temperatures, nll, softmax)
from fmnist_seq.errors import CalibrationError
from fmnist_seq.uncertainty import (answered_at, brier_score, calibration_measures, expected_calibration_error,
                                    negative_log_likelihood, reliability_bins, risk_coverage, threshold_for,
                                    thresholds_tested)


def synthetic(temperature: float, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), and the logits z * temperature a model with that miscalibration would give:
    softmax(logits / temperature) is then the true distribution, so the fit must find `temperature`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (n, 10))
    p = softmax(z)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z * temperature, labels


@pytest.mark.parametrize("temperature", [0.3, 0.76, 1.0, 2.5, 8.0])
def test_the_fit_recovers_a_known_temperature(temperature):
    logits, labels = synthetic(temperature)
    fitted = fit_temperature("gru", logits, labels)
    assert fitted == pytest.approx(temperature, rel=0.03)
    # and it is the NLL's minimum: a step either way costs
    assert nll(logits, labels, fitted) < min(nll(logits, labels, fitted * 1.05), nll(logits, labels, fitted / 1.05))


def test_a_fitted_temperature_never_changes_the_predicted_class_and_lowers_the_nll():
    logits, labels = synthetic(0.5)
    figures, _ = calibrated_on_validation("rnn", logits, labels, fit=True, targets=[0.9])
    t = figures["temperature"]
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()
    assert figures["valid_nll_calibrated"] < figures["valid_nll"]
    assert figures["valid_ece_calibrated"] < figures["valid_ece"]
    off, _ = calibrated_on_validation("rnn", logits, labels, fit=False, targets=[0.9])
    assert off["temperature"] == 1.0 and off["valid_nll_calibrated"] == off["valid_nll"]


def test_non_finite_logits_are_an_error_naming_the_model():
    logits, labels = synthetic(1.0, n=100)
    logits[3, 2] = np.nan
    logits[7, 0] = np.inf
    with pytest.raises(CalibrationError, match=r"^lstm: 2 of its valid logits are NaN or inf.*dvc repro train_lstm"):
        fit_temperature("lstm", logits, labels)


def test_a_calibration_split_of_one_class_is_an_error_naming_the_model():
    logits, _ = synthetic(1.0, n=50)
    with pytest.raises(CalibrationError, match=r"^gru: the valid split holds only class 4 \(50 images\)"):
        fit_temperature("gru", logits, np.full(50, 4))


@pytest.mark.parametrize("scale, words", [(30.0, "its logits barely predict the labels"),
                                          (0.02, r"the model gets .*% of its 2000 images right, so sharpening never "
                                                 "stops paying")])
def test_a_temperature_outside_its_range_is_an_error_naming_the_model(scale, words):
    logits, labels = synthetic(scale, n=2000)
    if scale > 1:  # confident logits that say nothing about the labels: the fit flattens them past T = 20
        labels = np.random.default_rng(1).permutation(labels)
    with pytest.raises(CalibrationError, match=rf"^rnn: the temperature fitted on the valid split is .*outside "
                                               rf"\(0.05, 20\): {words}"):
        fit_temperature("rnn", logits, labels)


def test_load_temperatures_names_what_is_missing(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"rnn": {"temperature": 0.7}, "gru": {"valid_nll": 0.3}}))
    assert load_temperatures(path, ["rnn"]) == {"rnn": 0.7}
    with pytest.raises(CalibrationError, match="has no temperature for gru: rerun dvc repro calibrate"):
        load_temperatures(path, ["rnn", "gru"])
    with pytest.raises(CalibrationError, match="not found: run the calibrate stage first"):
        load_temperatures(tmp_path / "none.json", ["rnn"])


# --- the measures, on four images worked out by hand -------------------------------------------------------------

# Top probabilities 0.70 (right), 0.62 (wrong), 0.82 (right), 0.72 (right): with 15 bins of width 1/15 they fall
# in bins 10 (0.70 and 0.72), 9 (0.62) and 12 (0.82).
PROBABILITIES = np.array([[0.70, 0.20, 0.10], [0.62, 0.30, 0.08], [0.08, 0.10, 0.82], [0.20, 0.72, 0.08]])
LABELS = np.array([0, 1, 2, 1])


def test_the_measures_match_a_hand_computed_example():
    # ECE: bin 10: 2 images, accuracy 1, confidence 0.71; bin 9: 1 image, 0 and 0.62; bin 12: 1 image, 1 and 0.82
    assert expected_calibration_error(PROBABILITIES, LABELS) == pytest.approx(2 / 4 * 0.29 + 1 / 4 * 0.62 + 1 / 4 * 0.18)
    assert expected_calibration_error(PROBABILITIES, LABELS) == pytest.approx(0.345)
    # NLL: -(ln 0.70 + ln 0.30 + ln 0.82 + ln 0.72) / 4
    assert negative_log_likelihood(PROBABILITIES, LABELS) == pytest.approx(0.5219008, abs=1e-6)
    # Brier: (0.09 + 0.04 + 0.01) + (0.3844 + 0.49 + 0.0064) + (0.0064 + 0.01 + 0.0324) + (0.04 + 0.0784 + 0.0064), / 4
    assert brier_score(PROBABILITIES, LABELS) == pytest.approx(0.2986)
    assert calibration_measures(PROBABILITIES, LABELS) == pytest.approx({"ece": 0.345, "nll": 0.5219008, "brier": 0.2986},
                                                                        abs=1e-6)
    bins = reliability_bins(PROBABILITIES, LABELS)
    assert len(bins) == 15 and [b.count for b in bins] == [0] * 9 + [1, 2, 0, 1, 0, 0]
    assert bins[10].confidence == pytest.approx(0.71) and bins[10].accuracy == 1.0 and bins[9].accuracy == 0.0
    assert (bins[10].low, bins[10].high) == pytest.approx((10 / 15, 11 / 15)) and math.isnan(bins[0].accuracy)


def test_thresholds_and_risk_coverage_on_the_hand_computed_example():
    # most confident first: 0.82 right, 0.72 right, 0.70 right, 0.62 wrong
    assert threshold_for(PROBABILITIES, LABELS, 1.0) == 0.70
    assert threshold_for(PROBABILITIES, LABELS, 0.75) == 0.62
    assert threshold_for(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([1, 0]), 0.6) is None  # the surest is wrong
    rows = risk_coverage(PROBABILITIES, LABELS, levels=4)
    assert [(r["coverage"], r["accuracy"], r["threshold"]) for r in rows] == [
        (0.25, 1.0, 0.82), (0.5, 1.0, 0.72), (0.75, 1.0, 0.70), (1.0, 0.75, 0.62)]
    tested = thresholds_tested({"0.99": {"threshold": 0.71}, "0.999": {"threshold": None}}, PROBABILITIES, LABELS)
    assert tested["0.99"] == {"threshold": 0.71, "test_coverage": 0.5, "test_accuracy": 1.0}
    assert tested["0.999"]["test_coverage"] == 0.0 and tested["0.999"]["test_accuracy"] is None


def test_a_tie_at_the_threshold_is_answered_whole():
    """Two images at 0.8, the right one first in order, then the wrong one: a threshold of 0.8 answers both, so
    100% needs 0.9, however the sort happens to order the tie."""
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.2]])
    assert threshold_for(probabilities, np.array([0, 1, 1]), 1.0) == 0.9
    assert answered_at(probabilities, np.array([0, 1, 1]), 0.8)["accuracy"] == pytest.approx(2 / 3)
