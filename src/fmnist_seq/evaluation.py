"""Test-set metrics of a checkpoint: accuracy with its 95% interval, mean loss, confusion matrix, per-class
precision/recall/F1, calibration before and after the model's temperature; and the paired comparison of models."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import torch

from fmnist_seq.calibration import softmax
from fmnist_seq.checkpoint import Checkpoint
from fmnist_seq.classes import CLASS_KEYS, CLASS_NAMES, NUM_CLASSES
from fmnist_seq.data import Split
from fmnist_seq.models import count_parameters, predict_logits
from fmnist_seq.significance import CONFIDENCE, clopper_pearson, mcnemar_exact
from fmnist_seq.uncertainty import calibration_measures


def confusion(labels: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """(classes, classes) counts; rows are actual classes, columns predicted ones."""
    flat = labels.long() * NUM_CLASSES + predicted.long()
    return torch.bincount(flat, minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Summary metrics and per-class figures, all derived from one confusion matrix."""
    predicted = logits.argmax(1)
    matrix = confusion(labels, predicted).double()
    true_pos = matrix.diag()
    precision = torch.where(matrix.sum(0) > 0, true_pos / matrix.sum(0).clamp(min=1), torch.zeros_like(true_pos))
    recall = torch.where(matrix.sum(1) > 0, true_pos / matrix.sum(1).clamp(min=1), torch.zeros_like(true_pos))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(true_pos))
    return {
        "accuracy": (predicted == labels).double().mean().item(),
        "loss": torch.nn.functional.cross_entropy(logits.double(), labels.long()).item(),
        "macro_f1": f1.mean().item(),
        "per_class": {key: {"precision": p, "recall": r, "f1": f}
                      for key, p, r, f in zip(CLASS_KEYS, precision.tolist(), recall.tolist(), f1.tolist())},
        "confusion": matrix.long().tolist(),
    }


def predictions_csv(labels: torch.Tensor, predicted: torch.Tensor) -> str:
    """`actual,predicted` rows with class names: the input of DVC's confusion template."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((CLASS_NAMES[a], CLASS_NAMES[p]) for a, p in zip(labels.tolist(), predicted.tolist()))
    return buffer.getvalue()


def csv_text(rows: list[dict]) -> str:
    """Rows of equal keys as CSV with a header: the data files of DVC's plots."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass
class Evaluation:
    """One model on the test set: its declared metrics, and the detail behind the figures."""

    metrics: dict[str, float | int]  # test accuracy and loss first: `dvc exp show` lists them in this order
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    predicted: torch.Tensor
    probabilities: np.ndarray  # softmax(logits / temperature): what the exported file gives
    uncalibrated: np.ndarray  # softmax(logits)


def evaluate_checkpoint(ckpt: Checkpoint, test: Split, batch_size: int, temperature: float = 1.0) -> Evaluation:
    logits = predict_logits(ckpt.model, test.images, batch_size)
    result = classification_metrics(logits, test.labels)
    right = int((logits.argmax(1) == test.labels).sum())
    low, high = clopper_pearson(right, len(test.labels))
    labels = test.labels.numpy()
    before, after = softmax(logits.numpy()), softmax(logits.numpy(), temperature)
    measures = {f"test_{key}{suffix}": value for probabilities, suffix in ((before, ""), (after, "_calibrated"))
                for key, value in calibration_measures(probabilities, labels).items()}
    metrics = {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "selected_epoch": ckpt.selected_epoch,
               # the exact (Clopper-Pearson) binomial interval over the test images
               "test_accuracy_low": low, "test_accuracy_high": high,
               "test_macro_f1": result["macro_f1"], "valid_accuracy": ckpt.valid["accuracy"],
               "valid_loss": ckpt.valid["loss"], "parameters": count_parameters(ckpt.model),
               "temperature": temperature, **{key: measures[key] for key in sorted(measures, key=_measure_order)}}
    return Evaluation(metrics=metrics, per_class=result["per_class"], confusion=result["confusion"],
                      predicted=logits.argmax(1), probabilities=after, uncalibrated=before)


def _measure_order(key: str) -> tuple[int, bool]:
    """ece, nll, brier; each before its calibrated value."""
    return ["ece", "nll", "brier"].index(key.split("_")[1]), key.endswith("_calibrated")


def compare_models(results: dict[str, Evaluation], labels: torch.Tensor) -> dict[str, dict[str, float | int]]:
    """Each pair of models on the same test images, the more accurate first: the gap in accuracy and the exact
    McNemar test of "equally accurate" (only the images where they disagree count)."""
    ranked = sorted(results, key=lambda n: results[n].metrics["test_accuracy"], reverse=True)
    compared = {}
    for i, first in enumerate(ranked):
        for second in ranked[i + 1:]:
            test = mcnemar_exact((results[first].predicted == labels).numpy(), (results[second].predicted == labels).numpy())
            compared[f"{first}_vs_{second}"] = {
                "difference": results[first].metrics["test_accuracy"] - results[second].metrics["test_accuracy"],
                "only_first_right": test.only_first, "only_second_right": test.only_second, "p_value": test.p_value}
    return compared


def comparison_line(pair: str, figures: dict[str, float | int]) -> str:
    """'lstm vs gru: +1.33 points, p = 1.2e-05 (exact McNemar: 310 images only lstm gets right, 177 only gru)'"""
    first, second = pair.split("_vs_")
    return (f"{first} vs {second}: {100 * figures['difference']:+.2f} points, p = {figures['p_value']:.2g} (exact "
            f"McNemar: {figures['only_first_right']} images only {first} gets right, "
            f"{figures['only_second_right']} only {second})")


REPORT_ACCURACY = {"rnn": 0.88, "gru": 0.90}  # the user report this project reproduces


def summary_markdown(results: dict[str, Evaluation], comparisons: dict[str, dict]) -> str:
    """A short comparison of the models with each other (the pairs of compare_models) and with the report, and
    what calibration changed."""
    lines = ["# Test-set summary", "",
             f"| model | test accuracy | {100 * CONFIDENCE:.0f}% interval | report | Δ vs report | test loss | macro F1 | "
             "selected epoch | valid accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m, report = r.metrics, REPORT_ACCURACY.get(name)
        delta = f"{100 * (m['test_accuracy'] - report):+.2f} pts" if report is not None else "–"
        lines.append(f"| {name} | {100 * m['test_accuracy']:.2f}% | {100 * m['test_accuracy_low']:.2f}–"
                     f"{100 * m['test_accuracy_high']:.2f}% | "
                     f"{f'{100 * report:.0f}%' if report is not None else '–'} | {delta} | {m['test_loss']:.4f} | "
                     f"{m['test_macro_f1']:.4f} | {m['selected_epoch']} | {100 * m['valid_accuracy']:.2f}% |")
    lines += ["", "The interval is the exact (Clopper-Pearson) binomial one over the test images. Paired on the same "
              "images:", ""]
    lines += [f"- {comparison_line(pair, figures)}" for pair, figures in comparisons.items()]
    lines += ["", "Calibration on the test set, before → after the temperature fitted on the validation split "
              "(expected calibration error over 15 equal-width bins of the top probability):", "",
              "| model | temperature | calibration error | NLL | Brier |", "|---|---|---|---|---|"]
    for name, r in results.items():
        m = r.metrics
        lines.append(f"| {name} | {m['temperature']:.3f} | {100 * m['test_ece']:.2f}% → {100 * m['test_ece_calibrated']:.2f}% "
                     f"| {m['test_nll']:.4f} → {m['test_nll_calibrated']:.4f} "
                     f"| {m['test_brier']:.4f} → {m['test_brier_calibrated']:.4f} |")
    hardest = {n: min(results[n].per_class.items(), key=lambda kv: kv[1]["f1"])[0] for n in results}
    lines += ["", "Hardest class (lowest F1): " + ", ".join(f"{n}: {k}" for n, k in hardest.items()) + "."]
    return "\n".join(lines) + "\n"


def misclassified(labels: torch.Tensor, predicted: torch.Tensor, limit: int) -> list[int]:
    """Indices of the first `limit` wrong predictions, in test-set order."""
    return torch.nonzero(labels != predicted).flatten()[:limit].tolist()
