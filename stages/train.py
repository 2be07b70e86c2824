"""train_rnn / train_gru: train one model on the prepared tensors, select the best-validation epoch."""

import argparse
from pathlib import Path

from dvclive import Live

from fmnist_seq.checkpoint import save_checkpoint
from fmnist_seq.config import MODEL_NAMES, TrainConfig, load_block, load_seed
from fmnist_seq.data import load_normalization, load_split
from fmnist_seq.plots import learning_curve
from fmnist_seq.stage import run_stage
from fmnist_seq.training import EpochRecord, fit

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", required=True, choices=MODEL_NAMES, help="which params block: train_<model>")
parser.add_argument("--data", required=True, help="prepared data folder (train.pt, valid.pt, stats.json)")
parser.add_argument("--checkpoint", required=True, help="where the selected checkpoint goes")
parser.add_argument("--live-dir", required=True, help="this model's own dvclive folder")
args = parser.parse_args()


def main() -> None:
    cfg = load_block(TrainConfig, f"train_{args.model}")
    seed = load_seed()
    train, valid = load_split(args.data, "train"), load_split(args.data, "valid")
    norm = load_normalization(args.data)
    print(f"train_{args.model}: {len(train)} train / {len(valid)} valid images, {cfg.model}")
    # dvcyaml=False: dvc.yaml declares these plots itself; one owner for each declaration.
    with Live(dir=args.live_dir, dvcyaml=False, save_dvc_exp=False) as live:
        def log_epoch(record: EpochRecord) -> None:
            live.step = record.epoch
            for split in ("train", "valid"):
                for metric in ("loss", "accuracy"):
                    live.log_metric(f"{split}/{metric}", getattr(record, f"{split}_{metric}"))
            live.log_metric("lr", record.lr)

        result = fit(cfg, train, valid, seed, on_epoch=log_epoch)
        live.log_metric("selected/epoch", result.selected_epoch, plot=False)
        live.log_metric("selected/valid_loss", result.selected.valid_loss, plot=False)
        live.log_metric("selected/valid_accuracy", result.selected.valid_accuracy, plot=False)
        live.log_metric("train_seconds", round(result.history[-1].elapsed_s, 1), plot=False)
        history = [vars(r) for r in result.history]
        live.log_image("learning_curve.png",
                       learning_curve(history, result.selected_epoch, f"{args.model.upper()} learning curve"))
    save_checkpoint(args.checkpoint, result, cfg, norm)
    print(f"train_{args.model}: selected epoch {result.selected_epoch} "
          f"(valid loss {result.selected.valid_loss:.4f}, accuracy {result.selected.valid_accuracy:.4f}) "
          f"-> {Path(args.checkpoint)}")


if __name__ == "__main__":
    run_stage(f"train_{args.model}", main, outputs=[args.checkpoint, args.live_dir])
