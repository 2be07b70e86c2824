"""calibrate: fit each model's temperature on the validation split's logits (minimum NLL), and the confidence
thresholds that reach the target accuracies there; evaluate and export read them."""

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)

from fmnist_seq.atomic import write_json
from fmnist_seq.calibration import calibrated_on_validation
from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.config import MODEL_NAMES, CalibrateConfig, TrainConfig, load_block
from fmnist_seq.data import load_split
from fmnist_seq.models import predict_logits
from fmnist_seq.stage import run_stage

BATCH = 1000  # images per forward pass: logits do not depend on it


def calibrate(args: argparse.Namespace) -> None:
    cfg = load_block(CalibrateConfig, "calibrate")
    valid = load_split(args.data, "valid")
    metrics, thresholds = {}, {}
    for name in MODEL_NAMES:
        ckpt = load_checkpoint(Path(args.checkpoints) / f"{name}.pt", load_block(TrainConfig, f"train_{name}").model)
        logits = predict_logits(ckpt.model, valid.images, BATCH).double().numpy()
        metrics[name], thresholds[name] = calibrated_on_validation(
            name, logits, valid.labels.numpy(), cfg.fit, cfg.target_accuracies)
        m = metrics[name]
        print(f"{name}: temperature {m['temperature']:.4f}; validation NLL {m['valid_nll']:.4f} -> "
              f"{m['valid_nll_calibrated']:.4f}, calibration error {100 * m['valid_ece']:.2f}% -> "
              f"{100 * m['valid_ece_calibrated']:.2f}%")
    write_json(args.metrics, metrics)
    write_json(args.thresholds, thresholds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="prepared data folder (valid.pt)")
    parser.add_argument("--checkpoints", required=True, help="folder holding <model>.pt for each shipped model")
    parser.add_argument("--metrics", required=True, help="JSON per model: temperature, validation NLL and ECE")
    parser.add_argument("--thresholds", required=True, help="JSON per model: threshold per target accuracy")
    args = parser.parse_args()
    run_stage("calibrate", lambda: calibrate(args), outputs=[args.metrics, args.thresholds])


if __name__ == "__main__":
    main()
