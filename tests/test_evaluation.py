import numpy as np
import pytest
import torch

from fmnist_seq.classes import CLASS_KEYS, CLASS_NAMES, class_key
from fmnist_seq.evaluation import (Evaluation, classification_metrics, compare_models, confusion, misclassified,
                                   predictions_csv, summary_markdown)


def test_metrics_agree_with_the_confusion_matrix():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=generator)
    logits = torch.randn(500, 10, generator=generator)
    logits[torch.arange(500), labels] += 1.5  # better than chance, not perfect
    m = classification_metrics(logits, labels)
    matrix = torch.tensor(m["confusion"])
    assert matrix.sum() == 500
    assert m["accuracy"] == pytest.approx(matrix.diag().sum().item() / 500)
    for i, key in enumerate(CLASS_KEYS):
        per = m["per_class"][key]
        assert per["recall"] == pytest.approx(matrix[i, i].item() / matrix[i].sum().item())
        assert per["precision"] == pytest.approx(matrix[i, i].item() / matrix[:, i].sum().item())
        assert per["f1"] == pytest.approx(2 * per["precision"] * per["recall"] / (per["precision"] + per["recall"]))
    assert m["macro_f1"] == pytest.approx(sum(v["f1"] for v in m["per_class"].values()) / 10)
    assert m["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


def test_confusion_rows_are_actual_classes():
    matrix = confusion(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]))
    assert matrix[0, 2] == 1 and matrix[2, 0] == 0 and matrix.sum() == 3


def test_class_absent_from_predictions_gets_zero_not_nan():
    m = classification_metrics(torch.nn.functional.one_hot(torch.zeros(5, dtype=torch.long), 10).float(),
                               torch.tensor([0, 1, 2, 3, 4]))
    assert m["per_class"]["trouser"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_predictions_csv_uses_class_names():
    text = predictions_csv(torch.tensor([0, 9]), torch.tensor([6, 9]))
    assert text.splitlines() == ["actual,predicted", "T-shirt/top,Shirt", "Ankle boot,Ankle boot"]
    assert class_key("T-shirt/top") == "t_shirt_top" and len(set(CLASS_KEYS)) == len(CLASS_NAMES)


def test_misclassified_and_summary():
    assert misclassified(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0]), 5) == [1, 3]
    per_class = {k: {"precision": 1.0, "recall": 1.0, "f1": 0.5 if k == "shirt" else 0.9} for k in CLASS_KEYS}
    labels = torch.tensor([0] * 60 + [1] * 40)
    wrong = {"rnn": 30, "gru": 10}  # the gru gets right every image the rnn does, and 20 more
    results = {name: Evaluation(metrics={"test_accuracy": 1 - wrong[name] / 100, "test_loss": 0.3, "selected_epoch": 4,
                                         "test_accuracy_low": 0.8, "test_accuracy_high": 0.95,
                                         "test_macro_f1": 0.9, "valid_accuracy": 0.9, "valid_loss": 0.3,
                                         "temperature": 0.75, "test_ece": 0.08, "test_ece_calibrated": 0.012,
                                         "test_nll": 0.35, "test_nll_calibrated": 0.3, "test_brier": 0.2,
                                         "test_brier_calibrated": 0.19},
                                per_class=per_class, confusion=[],
                                predicted=torch.where(torch.arange(100) < wrong[name], 1 - labels, labels),
                                probabilities=np.zeros(0), uncalibrated=np.zeros(0))
               for name in ("rnn", "gru")}
    comparisons = compare_models(results, labels)
    assert list(comparisons) == ["gru_vs_rnn"]  # the more accurate first
    gru_vs_rnn = comparisons["gru_vs_rnn"]
    assert (gru_vs_rnn["only_first_right"], gru_vs_rnn["only_second_right"]) == (20, 0)
    assert gru_vs_rnn["difference"] == pytest.approx(0.2) and gru_vs_rnn["p_value"] == 2 / 2 ** 20
    text = summary_markdown(results, comparisons)
    assert "| rnn | 70.00% | 80.00–95.00% | 88% | −18.00 pts |".replace("−", "-") in text
    assert "- gru vs rnn: +20.00 points, p = 1.9e-06 (exact McNemar: 20 images only gru gets right, 0 only rnn)" in text
    assert "| gru | 0.750 | 8.00% → 1.20% | 0.3500 → 0.3000 | 0.2000 → 0.1900 |" in text and "rnn: shirt" in text
