"""evaluate: test-set metrics, confusion matrices and figures for each model's selected checkpoint."""

import argparse
from pathlib import Path

import torch

from fmnist_seq.atomic import write_json, write_text
from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.classes import CLASS_NAMES
from fmnist_seq.config import MODEL_NAMES, EvaluateConfig, TrainConfig, load_block
from fmnist_seq.data import load_split
from fmnist_seq.evaluation import classification_metrics, misclassified, predictions_csv, summary_markdown
from fmnist_seq.plots import confusion_matrix, image_grid, per_class_accuracy, save_png
from fmnist_seq.stage import run_stage
from fmnist_seq.training import predict_logits

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--data", required=True, help="prepared data folder (test.pt)")
parser.add_argument("--checkpoint", required=True, action="append", metavar="NAME=PATH",
                    help="a model to evaluate, e.g. gru=models/gru.pt (repeatable)")
parser.add_argument("--out", required=True, help="folder for metrics, predictions, figures and summary")
args = parser.parse_args()
for spec in args.checkpoint:
    if spec.partition("=")[0] not in MODEL_NAMES or not spec.partition("=")[2]:
        parser.error(f"--checkpoint {spec!r}: expected NAME=PATH with NAME one of {', '.join(MODEL_NAMES)}")


def main() -> None:
    cfg = load_block(EvaluateConfig, "evaluate")
    test = load_split(args.data, "test")
    out = Path(args.out)
    metrics, per_class, recalls = {}, {}, {}
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        expected = load_block(TrainConfig, f"train_{name}").model
        ckpt = load_checkpoint(path, expected)
        logits = predict_logits(ckpt.model, test.images, cfg.batch_size, torch.device("cpu"))
        result = classification_metrics(logits, test.labels)
        predicted = logits.argmax(1)
        metrics[name] = {"test": {k: result[k] for k in ("accuracy", "loss", "macro_f1")},
                         "valid": ckpt.valid, "selected_epoch": ckpt.selected_epoch}
        per_class[name] = result["per_class"]
        recalls[name.upper()] = [v["recall"] for v in result["per_class"].values()]
        write_text(out / f"{name}_predictions.csv", predictions_csv(test.labels, predicted))
        save_png(confusion_matrix(torch.tensor(result["confusion"]).numpy(),
                                  f"{name.upper()} confusion on the test set"), out / f"confusion_{name}.png")
        wrong = misclassified(test.labels, predicted, cfg.misclassified_shown)
        pixels = (test.images[wrong] * ckpt.normalization.std + ckpt.normalization.mean).clamp(0, 1).numpy()
        titles = [f"true {CLASS_NAMES[test.labels[i]]}\npred {CLASS_NAMES[predicted[i]]}" for i in wrong]
        save_png(image_grid(pixels, titles, columns=8, suptitle=f"{name.upper()}: misclassified test images"),
                 out / f"misclassified_{name}.png")
        print(f"{name}: test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}, "
              f"macro F1 {result['macro_f1']:.4f} (selected epoch {ckpt.selected_epoch})")
    save_png(per_class_accuracy(recalls), out / "per_class_accuracy.png")
    write_json(out / "per_class.json", per_class)
    write_text(out / "summary.md", summary_markdown({n: {**metrics[n], "test": {**metrics[n]["test"],
                                                         "per_class": per_class[n]}} for n in metrics}))
    write_json(out / "metrics.json", metrics)


if __name__ == "__main__":
    run_stage("evaluate", main, outputs=[args.out])
