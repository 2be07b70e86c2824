"""Matplotlib figures the stages save as PNG plots; nothing here touches the file system but save_png."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fmnist_seq.atomic import atomic_path  # noqa: E402
from fmnist_seq.classes import CLASS_NAMES  # noqa: E402


def save_png(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def image_grid(images: np.ndarray, titles: Sequence[str], columns: int, suptitle: str) -> Figure:
    """A grid of grayscale images (N, 28, 28), each with its title."""
    rows = max(1, -(-len(images) // columns))
    # constrained layout leaves room for two-line titles; tight_layout let them overlap the row above.
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.3 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray")
        ax.set_title(title, fontsize=8)
    fig.suptitle(suptitle)
    return fig


def class_examples(images: np.ndarray, labels: Sequence[int]) -> Figure:
    """The report's data-exploration figure: one image per class titled `label:class name`."""
    titles = [f"{label}:{CLASS_NAMES[label]}" for label in labels]
    return image_grid(images, titles, columns=5, suptitle="One training example per class")


def learning_curve(history: Sequence[dict], selected_epoch: int, title: str) -> Figure:
    """Loss and accuracy per epoch, train vs validation, with the selected epoch marked.

    The two curves are measured differently, and the legend says so: the train figures are running means
    over the epoch's batches (dropout on, weights still moving), the validation figures come from the
    end-of-epoch model in eval mode. Both losses are plain cross-entropy, without label smoothing.
    """
    epochs = [h["epoch"] for h in history]
    labels = {"train": "train (running mean over the epoch, dropout on)",
              "valid": "validation (end of epoch, eval mode)"}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((ax_loss, "loss", "cross-entropy"), (ax_acc, "accuracy", "accuracy")):
        for split in ("train", "valid"):
            ax.plot(epochs, [h[f"{split}_{key}"] for h in history], "o-", label=labels[split])
        ax.axvline(selected_epoch, color="gray", linestyle="--", label=f"selected (epoch {selected_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(matrix: np.ndarray, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(matrix, cmap="Blues")
    ticks = range(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def per_class_accuracy(accuracies: dict[str, Sequence[float]]) -> Figure:
    """Per-class test accuracy (recall) of each model, bars side by side."""
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(accuracies))
    x = np.arange(len(CLASS_NAMES))
    for i, (name, values) in enumerate(accuracies.items()):
        ax.bar(x + (i - (len(accuracies) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (recall)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title("Per-class test accuracy")
    fig.tight_layout()
    return fig


def reliability_diagram(states: dict[str, Sequence], title: str) -> Figure:
    """Accuracy against mean confidence per bin for each state of a model (e.g. before and after calibration),
    the diagonal a perfectly calibrated model lies on, and below it the images in each bin.

    `states` maps a label to that state's bins (objects with low, high, count, confidence, accuracy).
    """
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(6, 7), sharex=True, height_ratios=(3, 1), layout="constrained")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
    width = 1 / max(len(b) for b in states.values()) / (len(states) + 1)
    for i, (label, bins) in enumerate(states.items()):
        filled = [b for b in bins if b.count]
        ax.plot([b.confidence for b in filled], [b.accuracy for b in filled], "o-", label=label)
        ax_count.bar([b.low + (i + 0.5) * width for b in bins], [b.count for b in bins], width, label=label)
    ax.set_ylabel("accuracy of the bin's images")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title)
    ax_count.set_yscale("log")
    ax_count.set_xlabel("top probability (mean of the bin's images)")
    ax_count.set_ylabel("images per bin")
    ax_count.grid(axis="y", alpha=0.3)
    return fig


def risk_coverage_curves(curves: dict[str, Sequence[dict]], title: str) -> Figure:
    """Accuracy of the answered images against the share answered, one curve per model (rows of coverage and
    accuracy, from the most confident image to all of them)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, rows in curves.items():
        ax.plot([100 * r["coverage"] for r in rows], [100 * r["accuracy"] for r in rows], label=label)
    ax.set_xlabel("images answered (%), the most confident first")
    ax.set_ylabel("accuracy of the answered images (%)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig
