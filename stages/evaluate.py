"""evaluate: test-set metrics, confusion matrices and figures for each model's selected checkpoint."""

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)
import numpy as np

from fmnist_seq.atomic import write_json, write_text
from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.classes import CLASS_NAMES
from fmnist_seq.config import MODEL_NAMES, EvaluateConfig, TrainConfig, load_block
from fmnist_seq.data import load_split
from fmnist_seq.evaluation import evaluate_checkpoint, misclassified, predictions_csv, summary_markdown
from fmnist_seq.plots import confusion_matrix, image_grid, per_class_accuracy, save_png
from fmnist_seq.stage import run_stage


def evaluate(args: argparse.Namespace) -> None:
    cfg = load_block(EvaluateConfig, "evaluate")
    test = load_split(args.data, "test")
    out = Path(args.out)
    results = {}
    for name in MODEL_NAMES:
        expected = load_block(TrainConfig, f"train_{name}").model
        ckpt = load_checkpoint(Path(args.checkpoints) / f"{name}.pt", expected)
        result = results[name] = evaluate_checkpoint(ckpt, test, cfg.batch_size)
        write_text(out / f"{name}_predictions.csv", predictions_csv(test.labels, result.predicted))
        save_png(confusion_matrix(np.array(result.confusion), f"{name.upper()} confusion on the test set"),
                 out / f"confusion_{name}.png")
        wrong = misclassified(test.labels, result.predicted, cfg.misclassified_shown)
        titles = [f"true {CLASS_NAMES[test.labels[i]]}\npred {CLASS_NAMES[result.predicted[i]]}" for i in wrong]
        save_png(image_grid(test.images[wrong].numpy(), titles, columns=8,
                            suptitle=f"{name.upper()}: misclassified test images"), out / f"misclassified_{name}.png")
        m = result.metrics
        print(f"{name}: test accuracy {m['test_accuracy']:.4f}, loss {m['test_loss']:.4f}, "
              f"macro F1 {m['test_macro_f1']:.4f} (selected epoch {m['selected_epoch']})")
    save_png(per_class_accuracy({n.upper(): [v["recall"] for v in r.per_class.values()] for n, r in results.items()}),
             out / "per_class_accuracy.png")
    write_json(out / "per_class.json", {n: r.per_class for n, r in results.items()})
    write_text(out / "summary.md", summary_markdown(results))
    write_json(out / "metrics.json", {n: r.metrics for n, r in results.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="prepared data folder (test.pt)")
    parser.add_argument("--checkpoints", required=True, help="folder holding rnn.pt and gru.pt")
    parser.add_argument("--out", required=True, help="folder for metrics, predictions, figures and summary")
    args = parser.parse_args()
    run_stage("evaluate", lambda: evaluate(args), outputs=[args.out])


if __name__ == "__main__":
    main()
