"""prepare: decode the raw IDX files, split train/valid (stratified), write uint8 tensors, statistics, figures."""

import argparse

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)

from fmnist_seq.atomic import write_json
from fmnist_seq.config import PrepareConfig, load_block, load_seed
from fmnist_seq.data import (data_metrics, examples_per_class, per_class_counts, prepare_splits, read_raw,
                             save_prepared)
from fmnist_seq.plots import class_examples, save_png
from fmnist_seq.stage import run_stage


def prepare(args: argparse.Namespace) -> None:
    cfg = load_block(PrepareConfig, "prepare")
    splits, norm = prepare_splits(read_raw(args.raw), cfg.valid_ratio, load_seed())
    save_prepared(splits, norm, args.out)
    write_json(args.metrics, data_metrics(splits, norm))
    write_json(args.per_class, per_class_counts(splits))
    train = splits["train"]
    picks = examples_per_class(train)
    save_png(class_examples(train.images[picks].numpy(), train.labels[picks].tolist()), args.examples)
    print(f"prepared {', '.join(f'{n}: {len(s)}' for n, s in splits.items())} images; "
          f"train pixel mean {norm.mean:.4f}, std {norm.std:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="folder with the four decompressed IDX files")
    parser.add_argument("--out", required=True, help="folder for train/valid/test tensors and stats.json")
    parser.add_argument("--metrics", required=True, help="data metrics JSON (images per split, pixel statistics)")
    parser.add_argument("--per-class", required=True, help="JSON with the images of each class in each split")
    parser.add_argument("--examples", required=True, help="PNG with one example image per class")
    args = parser.parse_args()
    run_stage("prepare", lambda: prepare(args), outputs=[args.out, args.metrics, args.per_class, args.examples])


if __name__ == "__main__":
    main()
