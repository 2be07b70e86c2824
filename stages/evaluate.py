"""evaluate: test-set metrics, confusion matrices and figures for each model's selected checkpoint; calibration
before and after its temperature, accuracy intervals, paired comparisons, and what each confidence threshold buys."""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)
import numpy as np

from fmnist_seq.atomic import write_json, write_text
from fmnist_seq.calibration import load_temperatures
from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.classes import CLASS_NAMES
from fmnist_seq.config import MODEL_NAMES, EvaluateConfig, TrainConfig, load_block
from fmnist_seq.data import load_split
from fmnist_seq.evaluation import (Evaluation, compare_models, csv_text, evaluate_checkpoint, misclassified,
                                   predictions_csv, summary_markdown)
from fmnist_seq.plots import (confusion_matrix, image_grid, per_class_accuracy, reliability_diagram,
                              risk_coverage_curves, save_png)
from fmnist_seq.stage import run_stage
from fmnist_seq.uncertainty import reliability_bins, risk_coverage, thresholds_tested


def write_calibration(out: Path, name: str, result: Evaluation, labels: np.ndarray) -> list[dict]:
    """The model's reliability bins (calibrated and not) and risk-coverage rows as DVC plot data, and its diagram."""
    states = {f"calibrated (T = {result.metrics['temperature']:.3f})": reliability_bins(result.probabilities, labels),
              "uncalibrated (T = 1)": reliability_bins(result.uncalibrated, labels)}
    for bins, suffix in zip(states.values(), ("", "_uncalibrated")):
        rows = [{"bin": f"{b.low:.2f}-{b.high:.2f}", **asdict(b)} for b in bins if b.count]
        write_text(out / f"reliability_{name}{suffix}.csv", csv_text(rows))
    save_png(reliability_diagram(states, f"{name.upper()}: reliability on the test set (15 bins)"),
             out / f"reliability_{name}.png")
    curve = risk_coverage(result.probabilities, labels)
    write_text(out / f"risk_coverage_{name}.csv", csv_text(curve))
    return curve


def evaluate(args: argparse.Namespace) -> None:
    cfg = load_block(EvaluateConfig, "evaluate")
    test = load_split(args.data, "test")
    temperatures = load_temperatures(args.temperatures, MODEL_NAMES)
    valid_thresholds = json.loads(Path(args.valid_thresholds).read_text())
    out = Path(args.out)
    results, curves, thresholds = {}, {}, {}
    for name in MODEL_NAMES:
        expected = load_block(TrainConfig, f"train_{name}").model
        ckpt = load_checkpoint(Path(args.checkpoints) / f"{name}.pt", expected)
        result = results[name] = evaluate_checkpoint(ckpt, test, cfg.batch_size, temperatures[name])
        write_text(out / f"{name}_predictions.csv", predictions_csv(test.labels, result.predicted))
        save_png(confusion_matrix(np.array(result.confusion), f"{name.upper()} confusion on the test set"),
                 out / f"confusion_{name}.png")
        wrong = misclassified(test.labels, result.predicted, cfg.misclassified_shown)
        titles = [f"true {CLASS_NAMES[test.labels[i]]}\npred {CLASS_NAMES[result.predicted[i]]}" for i in wrong]
        save_png(image_grid(test.images[wrong].numpy(), titles, columns=8,
                            suptitle=f"{name.upper()}: misclassified test images"), out / f"misclassified_{name}.png")
        curves[name.upper()] = write_calibration(out / "calibration", name, result, test.labels.numpy())
        thresholds[name] = thresholds_tested(valid_thresholds[name], result.probabilities, test.labels.numpy())
        m = result.metrics
        print(f"{name}: test accuracy {m['test_accuracy']:.4f} ({m['test_accuracy_low']:.4f}-"
              f"{m['test_accuracy_high']:.4f}), loss {m['test_loss']:.4f}, macro F1 {m['test_macro_f1']:.4f} (selected "
              f"epoch {m['selected_epoch']}); calibration error {100 * m['test_ece']:.2f}% -> "
              f"{100 * m['test_ece_calibrated']:.2f}%, NLL {m['test_nll']:.4f} -> {m['test_nll_calibrated']:.4f}")
    comparisons = compare_models(results, test.labels)
    save_png(per_class_accuracy({n.upper(): [v["recall"] for v in r.per_class.values()] for n, r in results.items()}),
             out / "per_class_accuracy.png")
    save_png(risk_coverage_curves(curves, "Accuracy of the answered test images as the threshold rises"),
             out / "calibration" / "risk_coverage.png")
    write_json(out / "per_class.json", {n: r.per_class for n, r in results.items()})
    write_json(out / "thresholds.json", thresholds)
    write_text(out / "summary.md", summary_markdown(results, comparisons))
    write_json(out / "metrics.json", {**{n: r.metrics for n, r in results.items()}, "comparisons": comparisons})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="prepared data folder (test.pt)")
    parser.add_argument("--checkpoints", required=True, help="folder holding <model>.pt for each shipped model")
    parser.add_argument("--temperatures", required=True, help="the calibrate stage's metrics: each model's temperature")
    parser.add_argument("--valid-thresholds", required=True, help="the calibrate stage's thresholds per target accuracy")
    parser.add_argument("--out", required=True, help="folder for metrics, predictions, figures and summary")
    args = parser.parse_args()
    run_stage("evaluate", lambda: evaluate(args), outputs=[args.out])


if __name__ == "__main__":
    main()
