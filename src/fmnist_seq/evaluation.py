"""Test-set metrics of a checkpoint: accuracy, mean loss, confusion matrix, per-class precision/recall/F1."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import torch

from fmnist_seq.checkpoint import Checkpoint
from fmnist_seq.classes import CLASS_KEYS, CLASS_NAMES, NUM_CLASSES
from fmnist_seq.data import Split
from fmnist_seq.models import count_parameters, predict_logits


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


@dataclass
class Evaluation:
    """One model on the test set: its declared metrics, and the detail behind the figures."""

    metrics: dict[str, float | int]  # test accuracy and loss first: `dvc exp show` lists them in this order
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    predicted: torch.Tensor


def evaluate_checkpoint(ckpt: Checkpoint, test: Split, batch_size: int) -> Evaluation:
    logits = predict_logits(ckpt.model, test.images, batch_size)
    result = classification_metrics(logits, test.labels)
    metrics = {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "selected_epoch": ckpt.selected_epoch,
               "test_macro_f1": result["macro_f1"], "valid_accuracy": ckpt.valid["accuracy"],
               "valid_loss": ckpt.valid["loss"], "parameters": count_parameters(ckpt.model)}
    return Evaluation(metrics=metrics, per_class=result["per_class"], confusion=result["confusion"],
                      predicted=logits.argmax(1))


REPORT_ACCURACY = {"rnn": 0.88, "gru": 0.90}  # the user report this project reproduces


def summary_markdown(results: dict[str, Evaluation]) -> str:
    """A short comparison of the models with each other and with the report."""
    lines = ["# Test-set summary", "",
             "| model | test accuracy | report | Δ vs report | test loss | macro F1 | selected epoch | valid accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m, report = r.metrics, REPORT_ACCURACY.get(name)
        delta = f"{100 * (m['test_accuracy'] - report):+.2f} pts" if report is not None else "–"
        lines.append(f"| {name} | {100 * m['test_accuracy']:.2f}% | "
                     f"{f'{100 * report:.0f}%' if report is not None else '–'} | {delta} | {m['test_loss']:.4f} | "
                     f"{m['test_macro_f1']:.4f} | {m['selected_epoch']} | {100 * m['valid_accuracy']:.2f}% |")
    if len(results) >= 2:
        ranked = sorted(results, key=lambda n: results[n].metrics["test_accuracy"], reverse=True)
        best, other = ranked[0], ranked[1]
        gap = 100 * (results[best].metrics["test_accuracy"] - results[other].metrics["test_accuracy"])
        lines += ["", f"{best} beats {other} by {gap:.2f} points of test accuracy."]
        hardest = {n: min(results[n].per_class.items(), key=lambda kv: kv[1]["f1"])[0] for n in results}
        lines.append("Hardest class (lowest F1): " + ", ".join(f"{n}: {k}" for n, k in hardest.items()) + ".")
    return "\n".join(lines) + "\n"


def misclassified(labels: torch.Tensor, predicted: torch.Tensor, limit: int) -> list[int]:
    """Indices of the first `limit` wrong predictions, in test-set order."""
    return torch.nonzero(labels != predicted).flatten()[:limit].tolist()
