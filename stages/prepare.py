"""prepare: decode the raw IDX files, split train/valid (stratified), normalize, write tensors and figures."""

import argparse
from pathlib import Path

from fmnist_seq.atomic import write_json
from fmnist_seq.config import PrepareConfig, load_block, load_seed
from fmnist_seq.data import data_metrics, examples_per_class, prepare_splits, read_raw, save_prepared
from fmnist_seq.plots import class_examples, save_png
from fmnist_seq.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--raw", required=True, help="folder with the four decompressed IDX files")
parser.add_argument("--out", required=True, help="folder for train/valid/test tensors and stats.json")
parser.add_argument("--metrics", required=True, help="data metrics JSON (counts, normalization)")
parser.add_argument("--examples", required=True, help="PNG with one example image per class")
args = parser.parse_args()


def main() -> None:
    cfg = load_block(PrepareConfig, "prepare")
    raw = read_raw(args.raw)
    splits, norm = prepare_splits(raw, cfg.valid_ratio, load_seed())
    save_prepared(splits, norm, Path(args.out))
    write_json(args.metrics, data_metrics(splits, norm))
    train_idx = splits["train"].source_index
    picks = examples_per_class(splits["train"])
    save_png(class_examples(raw["train_images"][train_idx[picks]].numpy(),
                            splits["train"].labels[picks].tolist()), args.examples)
    print(f"prepared {', '.join(f'{n}: {len(s)}' for n, s in splits.items())} images; "
          f"train mean {norm.mean:.4f}, std {norm.std:.4f}")


if __name__ == "__main__":
    run_stage("prepare", main, outputs=[args.out, args.metrics, args.examples])
