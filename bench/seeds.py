"""Test accuracy over several seeds: how much of a result is the recipe, and how much the luck of one seed.

For each seed, in a scratch folder with params.yaml's settings (plus any -S overrides) and that seed, it
prepares the split (the seed drives the split as in the pipeline), trains the model with the training stage
itself (`stages/train.py`, data-parallel workers included) and scores the selected checkpoint on the
10,000 test images. Prints one JSON line per run and a summary line with the mean and the sample standard
deviation; --out appends a Markdown row per model and configuration.

  python bench/seeds.py --model gru --seeds 2026 2027 2028
  python bench/seeds.py --model gru --seeds 2026 2027 2028 -S model.bidirectional=true -S model.head=mean_steps \
      --label "bi-GRU, mean over steps" --out seeds_table.md
  python bench/seeds.py --model teacher -S precision=fp32   # the lstm's teacher alone
  python bench/seeds.py --model lstm   # a distilling block: its teacher (train_teacher) is trained first, same split,
                                       # then its logits (teacher_logits) are computed
  python bench/seeds.py --model lstm --seeds 2027 2028 -S epochs=18 --label "4 fp32 epochs; 18 epochs" \
      >> results/bench/lstm_recipes.jsonl   # a screened recipe, as docs/accuracy.md's table groups them

-S keys are relative to the model's train block (`lr=0.004`, `model.dropout=0.3`); values are YAML. -T does the
same for a distilling model's teacher (train_teacher): `--model lstm -T epochs=6 -T label_smoothing=0`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fmnist_seq.checkpoint import load_checkpoint
from fmnist_seq.config import MODEL_NAMES, PrepareConfig, TrainConfig, build, load_block, parse_yaml, read_params
from fmnist_seq.data import load_split, prepare_splits, read_raw, save_prepared
from fmnist_seq.evaluation import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def apply_overrides(block: dict, overrides: list[str]) -> dict:
    for item in overrides:
        key, _, value = item.partition("=")
        target = block
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = parse_yaml(value, f"-S {item}")  # as DVC reads it: `lr=3e-3` is a number
    return block


def train_stage(model: str, work: Path, extra: list[str] = (), checkpoint: Path | None = None) -> None:
    """The pipeline's training stage on the scratch folder's split and params."""
    subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "--model", model, "--data",
                    str(work / "prepared"), "--checkpoint", str(checkpoint or work / f"{model}.pt"), "--live-dir",
                    str(work / f"live-{model}"), "--timings", str(work / f"timings-{model}.json"), *extra],
                   cwd=work, check=True, stdout=subprocess.DEVNULL)


def teacher_logits(work: Path) -> None:
    """The pipeline's teacher_logits stage on the scratch folder's teacher and split."""
    subprocess.run([sys.executable, str(ROOT / "stages" / "teacher_logits.py"), "--teacher", str(work / "teacher.pt"),
                    "--data", str(work / "prepared"), "--out", str(work / "teacher_logits.pt"), "--timings",
                    str(work / "timings-teacher_logits.json")], cwd=work, check=True, stdout=subprocess.DEVNULL)


def run_seed(model: str, seed: int, overrides: list[str], raw: Path, teacher_overrides: list[str] = ()) -> dict:
    params = read_params(ROOT / "params.yaml")
    params["seed"] = seed
    apply_overrides(params[f"train_{model}"], overrides)
    cfg = build(TrainConfig, params[f"train_{model}"], f"train_{model}")  # a bad -S fails here, before work
    if teacher_overrides:
        if model == "teacher" or cfg.distill.alpha == 0:
            sys.exit(f"-T changes a distilling model's teacher, and train_{model} trains without one: use -S")
        apply_overrides(params["train_teacher"], teacher_overrides)
        build(TrainConfig, params["train_teacher"], "train_teacher")  # and a bad -T here
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        splits, norm = prepare_splits(read_raw(raw), load_block(PrepareConfig, "prepare").valid_ratio, seed)
        save_prepared(splits, norm, work / "prepared")
        start = time.perf_counter()
        teacher: list[str] = []
        if cfg.distill.alpha > 0:  # the teacher learns from the same split, as in the pipeline
            train_stage("teacher", work)
            teacher_logits(work)
            teacher = ["--teacher-logits", str(work / "teacher_logits.pt")]
        train_stage(model, work, teacher, checkpoint=work / "model.pt")
        seconds = time.perf_counter() - start
        ckpt = load_checkpoint(work / "model.pt", cfg.model)
        result = evaluate_checkpoint(ckpt, load_split(work / "prepared", "test"), batch_size=1000)
        workers = json.loads((work / f"timings-{model}.json").read_text())["workers"]
        teacher_run = teacher_summary(work) if teacher else {}
    return {"model": model, "seed": seed, "overrides": overrides,
            **({"teacher_overrides": list(teacher_overrides)} if teacher_overrides else {}),
            "precision": cfg.precision, **result.metrics, "train_wall_s": round(seconds, 1),
            "workers": workers, "valid_accuracy_by_epoch": [round(h["valid_accuracy"], 4) for h in ckpt.history],
            **teacher_run}


def teacher_summary(work: Path) -> dict:
    """The teacher's own figures in a distilling run: what a teacher recipe buys (validation accuracy of the selected
    epoch, as the lstm's is reported) and what it costs (its training's and its logits' seconds)."""
    teacher = load_checkpoint(work / "teacher.pt")
    timings = {stage: json.loads((work / f"timings-{stage}.json").read_text()) for stage in ("teacher", "teacher_logits")}
    return {"teacher_valid_accuracy": round(teacher.valid["accuracy"], 5), "teacher_epochs": len(teacher.history),
            "teacher_precision": timings["teacher"]["precision"], "teacher_train_s": timings["teacher"]["train_seconds"],
            "teacher_logits_s": timings["teacher_logits"]["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*MODEL_NAMES, "teacher"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2026, 2027, 2028])
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to the model's train block, e.g. -S model.hidden_size=256 (repeatable)")
    parser.add_argument("-T", dest="teacher_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to the teacher's train block (train_teacher) of a distilling model, e.g. "
                        "-T epochs=6 (repeatable)")
    parser.add_argument("--label", help="the configuration's name: each run's JSON line carries it as `recipe` (how "
                        "results/bench/lstm_recipes.jsonl groups its runs), and so does the Markdown row (default: "
                        "the overrides)")
    parser.add_argument("--raw", type=Path, default=ROOT / "data" / "raw", help="the four IDX files")
    parser.add_argument("--out", type=Path, help="append a Markdown table row to this file")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        run = run_seed(args.model, seed, args.overrides, args.raw, args.teacher_overrides)
        runs.append(run | ({"recipe": args.label} if args.label else {}))
        print(json.dumps(runs[-1]), flush=True)
    accuracies = [r["test_accuracy"] for r in runs]
    mean = statistics.mean(accuracies)
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    summary = {"model": args.model, "overrides": args.overrides, "seeds": args.seeds,
               "test_accuracy_mean": round(mean, 5), "test_accuracy_std": round(std, 5),
               "test_accuracy": accuracies, "parameters": runs[0]["parameters"],
               "train_wall_s_mean": round(statistics.mean(r["train_wall_s"] for r in runs), 1)}
    print(json.dumps(summary), flush=True)
    if args.out:
        label = args.label or (", ".join(args.overrides) or "defaults")
        each = ", ".join(f"{100 * a:.2f}" for a in accuracies)
        with args.out.open("a") as f:
            f.write(f"| {args.model.upper()} | {label} | {100 * mean:.2f}% ± {100 * std:.2f} | {each} | "
                    f"{runs[0]['parameters']:,} | {summary['train_wall_s_mean']:.0f} s |\n")


if __name__ == "__main__":
    main()
