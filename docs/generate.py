"""Fill the generated blocks of README.md and docs/*.md from params.yaml and results/ (`make docs`).

A block is everything between a `<!-- generated: <kind> -->` line and the next `<!-- end generated -->` line:
this script owns it and leaves all other text alone. `python docs/generate.py --check` writes nothing, lists
each stale block with a unified diff, and exits 1. The output depends only on the repository's files (and, for
`tests`, on what pytest collects): no time, host or machine enters it, so the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import statistics
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

from fmnist_seq.atomic import write_text
from fmnist_seq.config import (MODEL_NAMES, TRAINED_NAMES, ModelConfig, TrainConfig, load_block, load_export,
                               read_params)
from fmnist_seq.evaluation import REPORT_ACCURACY

ROOT = Path(__file__).resolve().parents[1]
OPENING, END = "<!-- generated: ", "<!-- end generated -->"
# A block's body holds no other opening: an opening without its end is an error, not the start of a longer block.
BLOCK = re.compile(re.escape(OPENING) + r"(?P<kind>[\w-]+) -->\n(?P<body>(?:(?!" + re.escape(OPENING) + r").)*?)(?="
                   + re.escape(END) + ")", re.S)
MISSING = "—"
Row = tuple[str, list[str]]


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def read_json(root: Path, path: str) -> dict[str, Any]:
    file = root / path
    return json.loads(file.read_text()) if file.is_file() else {}


# Numbers as a reader wants them; the files keep full precision.

def sig(value: float) -> str:
    """3 significant figures, as params.yaml's value reads when rounded."""
    return f"{value:.3g}"


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def points(drop: float) -> str:
    """An accuracy drop in percentage points, signed as a change (a drop of 0.0005 is -0.05 pts)."""
    return f"{-100 * drop:+.2f} pts".replace("-", "−")


def prose(text: str) -> str:
    """A sentence under a table, wrapped as the docs' own lines are."""
    return textwrap.fill(text, 110, break_long_words=False, break_on_hyphens=False)


def table(header: list[str], rows: list[Row]) -> str:
    """A Markdown table; rows whose cells are all missing are left out."""
    kept = [(label, cells) for label, cells in rows if any(cell != MISSING for cell in cells)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in kept]
    return "\n".join(lines)


# results: the committed run's accuracy per shipped model.

def results_block(root: Path) -> str:
    metrics = read_json(root, "results/evaluate/metrics.json")
    rows = []
    for name in MODEL_NAMES:
        if name not in metrics:  # a model added to the pipeline before its first committed run
            continue
        m, timings = metrics[name], read_json(root, f"results/train/{name}/timings.json")
        epoch = str(m["selected_epoch"]) + (f" of {len(timings['epochs'])}" if timings else "")
        training = (f"{timings['train_seconds']:.0f} s, {workers(timings)}" if timings else MISSING)
        report = REPORT_ACCURACY.get(name)
        interval = (f"{100 * m['test_accuracy_low']:.2f}–{100 * m['test_accuracy_high']:.2f}%"
                    if "test_accuracy_low" in m else MISSING)
        rows.append((name.upper(), [f"**{pct(m['test_accuracy'])}**", interval, pct(m["valid_accuracy"]), epoch,
                                    f"{m['parameters']:,}", training, f"{100 * report:g}%" if report else MISSING]))
    header = ["model", "test accuracy", "95% interval", "validation accuracy", "selected epoch (of trained)",
              "parameters", "training", "the report"]
    machine = read_json(root, "results/export/timings.json").get("matmul_gflops_torch")
    compared = metrics.get("comparisons", {})
    pairs = "; ".join(f"{first} vs {second}: {100 * c['difference']:+.2f} points, p = {c['p_value']:.2g}"
                      for first, second, c in ((*pair.split("_vs_"), c) for pair, c in compared.items()))
    source = ((f"The interval is the exact (Clopper-Pearson) binomial one over the test images; paired on "
               f"the same images (exact McNemar test): {pairs}. " if compared else "")
              + "From `results/evaluate/metrics.json` and `results/train/<model>/timings.json`"
              + (f"; this run's machine multiplied fp32 matrices at {machine:.0f} GFLOP/s in PyTorch "
                 "(`results/export/timings.json`)." if machine else "."))
    return table(header, rows) + "\n\n" + prose(source)


def workers(timings: dict[str, Any]) -> str:
    count, threads = timings["workers"], timings["threads_per_worker"]
    precision = f", {timings['precision']}" if "precision" in timings else ""  # recorded since issue 32
    return (f"{count} worker{'s' if count > 1 else ''} × {threads} thread{'s' if threads > 1 else ''}"
            f" ({timings['device']}{precision})")


# parameters: the training blocks' key settings.

def architecture(model: ModelConfig) -> str:
    parts = [model.cell] + (["bidirectional"] if model.bidirectional else [])
    parts += [f"{model.num_layers} layer{'s' if model.num_layers > 1 else ''}", f"hidden {model.hidden_size}",
              f"`{model.head}` head" + (f" ({model.head_hidden})" if model.head == "all_steps" else ""),
              f"dropout {sig(model.dropout)}"]
    if model.num_layers > 1 and model.layer_dropout > 0:
        parts.append(f"layer dropout {sig(model.layer_dropout)}")
    return ", ".join(parts)


OFF = "off"


def off_at_zero(value: float) -> str:
    return sig(value) if value else "0 (off)"


# (key, the block's value, meaning). The augment and distill rows appear only where some block turns them on.
PARAMETER_ROWS: list[tuple[str, Callable[[TrainConfig], str], str]] = [
    ("`model.*`", lambda c: architecture(c.model), "the architecture"),
    ("`optimizer`, `lr`, `schedule`, `warmup`", lambda c: f"{c.optimizer}, {sig(c.lr)}, {c.schedule}, {sig(c.warmup)}",
     "`lr` is the one-cycle peak, reached after `warmup` of the steps"),
    ("`weight_decay`, `grad_clip`, `label_smoothing`",
     lambda c: ", ".join(map(off_at_zero, (c.weight_decay, c.grad_clip, c.label_smoothing))),
     "regularization; 0 turns each off"),
    ("`batch_size`, `epochs`, `patience`", lambda c: f"{c.batch_size}, {c.epochs}, {c.patience}",
     "the global batch; `patience: 0` never stops early"),
    ("`precision`", lambda c: c.precision,
     "fp32, or bf16 autocast with fp32 weights ([performance.md](performance.md#precision))"),
    ("`workers`, `device`", lambda c: f"{c.workers}, {c.device}",
     "data-parallel processes (auto: one per core or GPU); CUDA when PyTorch sees a GPU"),
    ("`max_restarts`", lambda c: str(c.max_restarts),
     "restarts of all workers after one dies, resuming from the last epoch; 0: fail at once"),
    ("`seed`", lambda c: "null" if c.seed is None else str(c.seed),
     "the training's own seed; null: the project's `seed`, which also draws the split"),
    ("`augment`", lambda c: f"flip {sig(c.augment.flip)}, shift {c.augment.shift}" if c.augment.enabled else OFF,
     "random mirroring (probability) and shifts (pixels) of training images"),
    ("`distill`", lambda c: (f"alpha {sig(c.distill.alpha)}, temperature {sig(c.distill.temperature)}"
                             if c.distill.alpha > 0 else OFF),
     "weight of the teacher's soft targets (`train_teacher`), and their temperature"),
]
def parameters_block(root: Path) -> str:
    params = root / "params.yaml"
    names = [name for name in MODEL_NAMES if f"train_{name}" in read_params(params)]
    configs = [load_block(TrainConfig, f"train_{name}", params) for name in names]
    rows = []
    for key, value, meaning in PARAMETER_ROWS:
        values = [value(c) for c in configs]
        if any(v != OFF for v in values):
            rows.append((key, [*values, meaning]))
    return (table(["key", *(n.upper() for n in names), "meaning"], rows)
            + "\n\n" + prose("Values from `params.yaml` (`train_<model>`), decimals rounded to 3 significant "
                               "figures."))


# export: the ONNX files' size, parity, int8 decision and speed.

@dataclass(frozen=True)
class ExportColumn:
    """One file of the export: a model's fp32 file, or its int8 variant."""

    name: str
    int8: bool
    figures: dict[str, Any]  # this file's entry of results/export/metrics.json
    timings: dict[str, Any]  # the model's entry of results/export/timings.json
    test_accuracy: float | None  # fp32: PyTorch's (results/evaluate/metrics.json), which the gate makes it equal

    @property
    def header(self) -> str:
        if not self.int8:
            return f"{self.name.upper()} (fp32)"
        return f"{self.name.upper()} int8" + ("" if self.figures["kept"] else " (dropped)")

    def timed(self, key: str) -> float | None:
        """This file's figure of timings.json on onnxruntime's CPU provider."""
        return self.timings.get(("onnxruntime_cpu_int8_" if self.int8 else "onnxruntime_cpu_") + key)

    def fp32(self, key: str) -> Any:
        """A figure that only the fp32 file has (parity is checked against PyTorch, int8 against nothing)."""
        return None if self.int8 else self.figures.get(key)


def export_columns(root: Path) -> list[ExportColumn]:
    metrics = read_json(root, "results/export/metrics.json")
    timings = read_json(root, "results/export/timings.json")
    accuracy = read_json(root, "results/evaluate/metrics.json")
    columns = []
    for name in MODEL_NAMES:
        if name not in metrics:
            continue
        timed = timings.get(name, {})
        columns.append(ExportColumn(name, False, metrics[name], timed, accuracy.get(name, {}).get("test_accuracy")))
        if "int8" in metrics[name]:
            columns.append(ExportColumn(name, True, metrics[name]["int8"], timed, None))
    return columns


def maybe(value: Any, form: Callable[[Any], str]) -> str:
    return MISSING if value is None else form(value)


def int8_decision(c: ExportColumn, allowed: float) -> str:
    if not c.int8:
        return MISSING
    verdict, drop = "kept" if c.figures["kept"] else "dropped", c.figures.get("valid_accuracy_drop")
    return verdict if drop is None else f"{verdict}: {points(drop)} on validation ({points(allowed)} allowed)"


def int8_valid_accuracy(c: ExportColumn) -> str:
    f = c.figures
    if not c.int8 or "valid_accuracy" not in f:
        return MISSING
    return f"{pct(f['valid_accuracy'])} ({points(f['valid_accuracy_drop'])})"


def test_accuracy(c: ExportColumn) -> str:
    if not c.int8:
        return maybe(c.test_accuracy, pct)
    f = c.figures
    text = pct(f["test_accuracy"])
    if "test_accuracy_batch_1" in f and "test_accuracy_batch_1000" in f:  # the worse of the two is test_accuracy
        text = f"{pct(f['test_accuracy_batch_1'])} at batch 1, {pct(f['test_accuracy_batch_1000'])} at batch 1000"
    return text + (f" ({points(f['test_accuracy_drop'])})" if "test_accuracy_drop" in f else "")


def versus_torch(c: ExportColumn, key: str, form: Callable[[float], str]) -> str:
    """onnxruntime's figure, and PyTorch's in brackets beside the fp32 file's."""
    mine, torch = c.timed(key), c.timings.get(f"torch_{key}")
    if mine is None:
        return MISSING
    return form(mine) + ("" if c.int8 or torch is None else f" ({form(torch)})")


def export_block(root: Path) -> str:
    columns = export_columns(root)
    timings = read_json(root, "results/export/timings.json")
    allowed = load_export(root / "params.yaml").quantize_max_accuracy_drop
    batch = next((c.timings["batch_size"] for c in columns if "batch_size" in c.timings), None)
    diff, times = (lambda v: f"{v:.1e}"), (lambda v: f"{v:.2f}×")
    row_forms: list[tuple[str, Callable[[ExportColumn], str]]] = [
        ("file size", lambda c: f"{sig(c.figures['file_bytes'] / 1e6)} MB"),
        ("max \\|logit diff\\| vs PyTorch", lambda c: maybe(c.fp32("max_logit_diff"), diff)),
        ("max \\|probability diff\\| vs PyTorch", lambda c: maybe(c.fp32("max_probability_diff"), diff)),
        ("mismatched predictions vs PyTorch", lambda c: maybe(c.fp32("mismatched_predictions"), str)),
        ("temperature (probabilities = softmax(logits / T))", lambda c: maybe(c.fp32("temperature"), lambda v: f"{v:.3f}")),
        ("test calibration error (15 bins), calibrated", lambda c: maybe(c.figures.get("test_ece"), pct)),
        ("test NLL, calibrated", lambda c: maybe(c.figures.get("test_nll"), lambda v: f"{v:.4f}")),
        ("int8 file", lambda c: int8_decision(c, allowed)),
        ("validation accuracy", int8_valid_accuracy),
        ("test accuracy", test_accuracy),
        ("test accuracy, onnxruntime CUDA", lambda c: maybe(c.fp32("cuda_test_accuracy"), pct)),
        (f"images/s at batch {batch}, onnxruntime (PyTorch)",
         lambda c: versus_torch(c, "images_per_s", lambda v: f"{v:,.0f}")),
        (f"speed-up vs PyTorch at batch {batch}", lambda c: maybe(c.timed("speedup"), times)),
        ("single-image latency, onnxruntime (PyTorch)",
         lambda c: versus_torch(c, "latency_ms", lambda v: f"{sig(v)} ms")),
        ("single-image speed-up vs PyTorch", lambda c: maybe(c.timed("latency_speedup"), times)),
        (f"images/s at batch {batch}, onnxruntime CUDA",
         lambda c: MISSING if c.int8 else maybe(c.timings.get("onnxruntime_cuda_images_per_s"), lambda v: f"{v:,.0f}")),
    ]
    rows = [(label, [form(c) for c in columns]) for label, form in row_forms]
    threads = timings.get("threads")
    machine = (f"On {threads} thread{'s' if threads != 1 else ''} for both engines "
               f"({', '.join(timings.get('providers', []))}); fp32 matmul {timings['matmul_gflops_torch']} GFLOP/s in "
               f"PyTorch and {timings['matmul_gflops_onnxruntime']} in onnxruntime, measured in the same run "
               "(`results/export/timings.json`). " if "matmul_gflops_torch" in timings else "")
    source = ("Parity, sizes and the int8 figures: `results/export/metrics.json`; the fp32 test accuracy is "
              "PyTorch's (`results/evaluate/metrics.json`), which the gate lets no prediction differ from.")
    return table(["figure", *(c.header for c in columns)], rows) + "\n\n" + prose(machine + source)


# thresholds: per model, the confidence an app may require for a target accuracy, and what it then answers.

def thresholds_block(root: Path) -> str:
    thresholds = read_json(root, "results/evaluate/thresholds.json")
    rows = []
    for name in MODEL_NAMES:
        for target, t in thresholds.get(name, {}).items():
            if t["threshold"] is None:
                rows.append((name.upper(), [f"{100 * float(target):g}%", "not reached on validation", MISSING, MISSING,
                                            MISSING]))
                continue
            rows.append((name.upper(), [f"{100 * float(target):g}%", f"{t['threshold']:.3f}", pct(t["valid_coverage"]),
                                        pct(t["test_coverage"]), maybe(t["test_accuracy"], pct)]))
    if not rows:
        return prose("No committed run has chosen thresholds yet (`results/evaluate/thresholds.json`).")
    header = ["model", "accuracy asked (validation)", "`--min-confidence`", "answered, validation",
              "answered, test", "accuracy on test"]
    return table(header, rows) + "\n\n" + prose(
        "The lowest threshold on the calibrated top probability whose answered validation images reach the accuracy "
        "asked, the share of images it answers, and what it gives on the test images, which chose nothing "
        "(`results/evaluate/thresholds.json`; the fp32 files, whose probabilities PyTorch's match).")


# training-timings: how fast the committed run trained.

def training_timings_block(root: Path) -> str:
    rows = []
    for name in TRAINED_NAMES:
        timings = read_json(root, f"results/train/{name}/timings.json")
        if timings:
            rows.append((name.upper() if name in MODEL_NAMES else name,
                         [workers(timings), str(len(timings["epochs"])), f"{timings['train_seconds']:.0f}",
                          f"{timings['images_per_s']:,.0f}"]))
    return (table(["model", "processes", "epochs", "train seconds", "images/s (whole run)"], rows)
            + "\n\n" + prose("From `results/train/<model>/timings.json` (wall time of the training stage's epochs, "
                               "not a declared metric)."))


# lstm-budget: the third model's training cost against the report's two (issue 27: at most 1.5 times).

LSTM_BUDGET = 1.5


def lstm_budget_block(root: Path) -> str:
    seconds = {name: read_json(root, f"results/train/{name}/timings.json").get("train_seconds")
               for name in ("rnn", "gru", "teacher", "lstm")}
    if None in seconds.values():
        return prose("No committed run has trained all four models yet (`results/train/<model>/timings.json`).")
    # The teacher's pass over the training images: timed inside the lstm's run until issue 32, in stage
    # teacher_logits since; a run without that file (older) counted it in the lstm's seconds.
    logits = read_json(root, "results/teacher_logits/timings.json").get("seconds")
    if logits is not None:
        seconds["teacher"] += logits
    ratio = (seconds["teacher"] + seconds["lstm"]) / (seconds["rnn"] + seconds["gru"])
    teacher = "the teacher (its logits included)" if logits is not None else "the teacher"
    return prose(f"In the committed run {teacher} and the lstm trained in {seconds['teacher']:.0f} + "
                 f"{seconds['lstm']:.0f} s, **{ratio:.2f}×** the {seconds['rnn']:.0f} + {seconds['gru']:.0f} s of "
                 f"the RNN and the GRU ({'within' if ratio <= LSTM_BUDGET else 'over'} the budget of "
                 f"{LSTM_BUDGET:g}×; from `results/train/<model>/timings.json`).")


# lstm-seeds: the third model over 3 seeds (issue 32's targets), from the lines bench/seeds.py wrote.

SEEDS_LSTM = "results/bench/seeds_lstm.jsonl"
LSTM_TARGETS = {"mean": 0.926, "each seed": 0.924, "committed run": 0.928}


def read_jsonl(root: Path, path: str) -> list[dict[str, Any]]:
    file = root / path
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []


def lstm_seeds_block(root: Path) -> str:
    runs = sorted(read_jsonl(root, SEEDS_LSTM), key=lambda run: run["seed"])
    if len(runs) < 2:
        return prose(f"Fewer than two seeds are recorded in `{SEEDS_LSTM}`.")
    test, valid = [run["test_accuracy"] for run in runs], [run["valid_accuracy"] for run in runs]
    rows = [(str(run["seed"]), [pct(run["test_accuracy"]), pct(run["valid_accuracy"]), str(run["selected_epoch"])])
            for run in runs]
    rows.append(("mean ± sd", [f"**{pct(statistics.mean(test))} ± {100 * statistics.stdev(test):.2f}**",
                               f"{pct(statistics.mean(valid))} ± {100 * statistics.stdev(valid):.2f}", ""]))
    committed = next((run for run in runs if "source" in run), runs[0])
    measured = {"mean": statistics.mean(test), "each seed": min(test), "committed run": committed["test_accuracy"]}
    verdicts = [f"{what} {pct(measured[what])} ({'met' if measured[what] >= aim else 'missed'}, aim {100 * aim:g}%)"
                for what, aim in LSTM_TARGETS.items()]
    return (table(["seed", "test accuracy", "validation accuracy", "selected epoch"], rows) + "\n\n"
            + prose(f"From `{SEEDS_LSTM}` (seed {committed['seed']}: the committed pipeline run; sd: the sample "
                    f"standard deviation, in points). Against the targets: {'; '.join(verdicts)}."))


# lstm-recipes: the candidate recipes of issue 32 screened on validation, from bench/seeds.py lines labelled by recipe.

LSTM_RECIPES = "results/bench/lstm_recipes.jsonl"


def lstm_recipes_block(root: Path) -> str:
    runs = [run for run in read_jsonl(root, LSTM_RECIPES) if "seed" in run]  # bench/seeds.py's summary lines left out
    if not runs:
        return prose(f"No screening run in `{LSTM_RECIPES}` yet.")
    seeds = sorted({run["seed"] for run in runs})
    rows = []
    for recipe in dict.fromkeys(run["recipe"] for run in runs):
        mine = {run["seed"]: run for run in runs if run["recipe"] == recipe}
        teachers = [run["teacher_valid_accuracy"] for run in mine.values() if "teacher_valid_accuracy" in run]
        rows.append((recipe, [pct(statistics.mean(teachers)) if teachers else MISSING,
                              *(pct(mine[seed]["valid_accuracy"]) if seed in mine else MISSING for seed in seeds),
                              f"**{pct(statistics.mean(run['valid_accuracy'] for run in mine.values()))}** "
                              f"({len(mine)})",
                              f"{statistics.mean(run['train_wall_s'] for run in mine.values()):.0f}"]))
    return (table(["recipe (teacher; lstm)", "teacher validation (mean)", *(f"lstm validation, seed {seed}"
                                                                          for seed in seeds),
                   "lstm validation mean (seeds)", "seconds per seed, one core"], rows) + "\n\n"
            + prose(f"Each line a `bench/seeds.py --model lstm --label <recipe>` run on one core (the teacher, its "
                    f"logits and the lstm of that seed's split; test accuracy not shown: the choice was made on "
                    f"validation). The seconds are one core's, for comparing recipes with each other only. From "
                    f"`{LSTM_RECIPES}`."))


# precision-bench, precision-choice, isa-repro: fp32 against bf16 training (issue 32), from bench/precision.py,
# bench/seeds.py and bench/isa.py.

PRECISION_BENCH = "results/bench/precision.jsonl"
PRECISION_SEEDS = "results/bench/precision_seeds.jsonl"
ISA_REPRO = "results/bench/isa.jsonl"
PLACEMENT_NAMES = {(1, 1): "1 worker × 1 thread", (1, 2): "1 worker × 2 threads", (2, 1): "2 workers × 1 thread"}
BF16_MIN_SPEEDUP, BF16_MAX_LOSS = 1.3, 0.001  # the rule: at least 1.3x faster, 3-seed validation mean within 0.1 pt


def precision_bench_block(root: Path) -> str:
    runs = read_jsonl(root, PRECISION_BENCH)
    if not runs:
        return prose(f"No measurement in `{PRECISION_BENCH}` yet "
                     f"(`python bench/precision.py --out {PRECISION_BENCH}`).")
    rows = [(run["model"].upper() if run["model"] in MODEL_NAMES else run["model"],
             [PLACEMENT_NAMES[(run["workers"], run["threads_per_worker"])], f"{run['fp32_images_per_s']:,.0f}",
              f"{run['bf16_images_per_s']:,.0f}", f"**{run['bf16_speedup']:.2f}×**",
              f"{run['fp32_s_per_epoch']:.0f}", f"{run['bf16_s_per_epoch']:.0f}"]) for run in runs]
    first = runs[0]
    return (table(["model", "placement", "fp32 images/s", "bf16 images/s", "bf16 speedup", "fp32 s/epoch",
                   "bf16 s/epoch"], rows) + "\n\n"
            + prose(f"One epoch of the training stage on the first {first['images']:,} training images per cell, fp32 "
                    f"and bf16 back to back ({first['repeats']} epoch(s) each, the best kept); seconds per epoch "
                    f"scaled to the 54,000 training images. Processor with native bf16: "
                    f"{'yes' if first['native_bf16'] else 'no'}; fp32 matmul at {first['matmul_gflops']:.0f} GFLOP/s "
                    f"(2 threads). From `{PRECISION_BENCH}`."))


def precision_choice_block(root: Path) -> str:
    """Per model: the bench's speedup at the pipeline's placement and the 3-seed validation means, against the rule."""
    bench = read_jsonl(root, PRECISION_BENCH)
    seeds = read_jsonl(root, PRECISION_SEEDS)
    if not bench or not seeds:
        return prose(f"Not measured yet (`{PRECISION_BENCH}`, `{PRECISION_SEEDS}`).")
    rows = []
    for name in dict.fromkeys(run["model"] for run in seeds):
        by_precision = {p: [r["valid_accuracy"] for r in seeds if r["model"] == name and r["precision"] == p]
                        for p in ("fp32", "bf16")}
        if not all(by_precision.values()):
            continue
        cfg = load_block(TrainConfig, f"train_{name}", root / "params.yaml")
        placement = next((r for r in bench if r["model"] == name and r["workers"] > 1), None) if cfg.workers != 1 \
            else next((r for r in bench if r["model"] == name and (r["workers"], r["threads_per_worker"]) == (1, 2)),
                      None)
        speedup = placement["bf16_speedup"] if placement else float("nan")
        fp32, bf16 = (statistics.mean(v) for v in by_precision.values())
        adopt = speedup >= BF16_MIN_SPEEDUP and bf16 >= fp32 - BF16_MAX_LOSS
        rows.append((name.upper() if name in MODEL_NAMES else name,
                     [f"{speedup:.2f}× ({PLACEMENT_NAMES[(placement['workers'], placement['threads_per_worker'])]})"
                      if placement else MISSING,
                      f"{pct(fp32)} ({len(by_precision['fp32'])})", f"{pct(bf16)} ({len(by_precision['bf16'])})",
                      f"{100 * (bf16 - fp32):+.2f}".replace("-", "−"), "bf16" if adopt else "fp32",
                      cfg.precision]))
    return (table(["model", "bf16 speedup (pipeline's placement)", "fp32 validation mean (seeds)",
                   "bf16 validation mean (seeds)", "bf16 − fp32 (pts)", "the rule says", "params.yaml"], rows)
            + "\n\n" + prose(f"The rule: bf16 where it is at least {BF16_MIN_SPEEDUP:g}× faster at the placement the "
                               f"pipeline trains with and its mean validation accuracy over the seeds is at most "
                               f"{100 * BF16_MAX_LOSS:g} points below fp32's. Speedups from `{PRECISION_BENCH}`, "
                               f"validation accuracies from `{PRECISION_SEEDS}` (bench/seeds.py lines, each seed on "
                               f"its own split)."))


def isa_repro_block(root: Path) -> str:
    lines = read_jsonl(root, ISA_REPRO)
    profiles = [line for line in lines if "profile" in line]
    runs = [line for line in lines if "model" in line]
    if not runs:
        return prose(f"No measurement in `{ISA_REPRO}` yet (`python bench/isa.py --out {ISA_REPRO}`).")
    names = [p["profile"] for p in profiles]
    rows = [(f"{run['model'].upper() if run['model'] in MODEL_NAMES else run['model']}, {run['precision']}",
             ["same" if run["same_as_native"][name] else "fails to train" if run["weights_sha256"][name].startswith(
                 "failed") else "**differs**" for name in names[1:]]) for run in runs]
    described = "; ".join(f"{p['profile']}: " + (", ".join(f"`{k}={v}`" for k, v in p["environment"].items())
                                                  or "nothing limited")
                          + f" (oneDNN reported {p['onednn_isa']}, ATen {p['aten_capability']})" for p in profiles)
    return (table(["model, precision", *(f"weights with {name} vs native" for name in names[1:])], rows) + "\n\n"
            + prose(f"One epoch of each training stage on the first {runs[0]['images']:,} training images, from the "
                    f"same initial weights, under each profile: {described}. Same: the SHA-256 of every trained "
                    f"tensor's bytes is equal. From `{ISA_REPRO}`."))


# tune-recipe-studies, tune-arch-study: the Optuna studies committed under results/tune/.

def study_summary(root: Path, study: str) -> str:
    """The first line of the study's summary.md, which fmnist-tune writes: trials, states, what pruning saved."""
    file = root / "results" / "tune" / study / "summary.md"
    lines = [line for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")] \
        if file.is_file() else []
    return lines[0].rstrip(".") if lines else MISSING


def study_trials(root: Path, study: str) -> list[dict[str, str]]:
    file = root / "results" / "tune" / study / "trials.csv"
    return list(csv.DictReader(file.open())) if file.is_file() else []


def best_trial(trials: list[dict[str, str]]) -> dict[str, str] | None:
    finished = [t for t in trials if t["state"] == "complete"]
    return max(finished, key=lambda t: float(t["valid_accuracy"])) if finished else None


def tune_recipe_studies_block(root: Path) -> str:
    items = []
    for study in ("gru", "rnn"):
        best = best_trial(study_trials(root, study))
        if best is not None:
            items.append(textwrap.fill(f"- `{study}`: {study_summary(root, study)}. Best: trial {best['trial']}, "
                                       f"{pct(float(best['valid_accuracy']))} validation.", 110,
                                       subsequent_indent="  ", break_long_words=False, break_on_hyphens=False))
    return "\n".join(items) + "\n\n" + prose("From `results/tune/<study>/summary.md` and `trials.csv`.")


def tune_arch_study_block(root: Path) -> str:
    trials = [t for t in study_trials(root, "gru_arch") if t["state"] == "complete"]
    rows = [(t["trial"], [t["model.cell"], "yes" if t["model.bidirectional"] == "True" else "no", t["model.head"],
                          f"{t['model.hidden_size']} × {t['model.num_layers']}", pct(float(t["valid_accuracy"])),
                          f"{float(t['seconds']):.0f}"])
            for t in sorted(trials, key=lambda t: float(t["valid_accuracy"]), reverse=True)]
    return (prose(f"{study_summary(root, 'gru_arch')}. The finished trials, best first:") + "\n\n"
            + table(["trial", "cell", "bidirectional", "head", "width × layers", "validation",
                     "seconds (one thread)"], rows)
            + "\n\n" + prose("From `results/tune/gru_arch/summary.md` and `trials.csv`."))


# tests: the suite's size, as pytest collects it.

COLLECTED = re.compile(r"^(?:(?P<quick>\d+)/)?(?P<all>\d+) tests? collected(?: \((?P<deselected>\d+) deselected\))?",
                       re.M)


def count_tests(root: Path) -> tuple[int, int]:
    """(every test, the quick loop's), from one `pytest --collect-only` that runs no test."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not e2e",
                             "-p", "no:cacheprovider", "-o", "addopts="],
                            cwd=root, capture_output=True, text=True)
    found = COLLECTED.search(result.stdout)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"pytest --collect-only failed (exit {result.returncode}):\n{result.stdout[-2000:]}"
                           f"{result.stderr[-2000:]}")
    every = int(found["all"])
    return every, int(found["quick"] or every)


def tests_block(root: Path) -> str:
    every, quick = count_tests(root)
    return prose(f"The suite has **{every}** tests; **{quick}** of them are the quick loop (`pytest -m \"not e2e\"`), "
                 f"the other {every - quick} are marked `e2e` (counted by `pytest --collect-only`).")


KINDS: dict[str, Callable[[Path], str]] = {
    "results": results_block,
    "parameters": parameters_block,
    "export": export_block,
    "thresholds": thresholds_block,
    "training-timings": training_timings_block,
    "lstm-budget": lstm_budget_block,
    "lstm-seeds": lstm_seeds_block,
    "lstm-recipes": lstm_recipes_block,
    "precision-bench": precision_bench_block,
    "precision-choice": precision_choice_block,
    "isa-repro": isa_repro_block,
    "tune-recipe-studies": tune_recipe_studies_block,
    "tune-arch-study": tune_arch_study_block,
    "tests": tests_block,
}


@cache
def rendered(kind: str, root: Path = ROOT) -> str:
    """The block's text, with a blank line either side so that Markdown sees a table, not the comment's tail."""
    return "\n" + KINDS[kind](root) + "\n\n"


@dataclass(frozen=True)
class Block:
    kind: str
    line: int  # of its opening comment, 1-based
    start: int  # offsets of its body in the document
    end: int

    @staticmethod
    def all_in(text: str, name: str) -> list[Block]:
        blocks = [Block(match["kind"], line_of(text, match.start()), match.start("body"), match.end("body"))
                  for match in BLOCK.finditer(text)]
        matched = {block.line for block in blocks}
        for offset in (m.start() for m in re.finditer(re.escape(OPENING), text)):
            if line_of(text, offset) not in matched:
                raise ValueError(f"{name}:{line_of(text, offset)}: a generated block without its `{END}` line")
        for block in blocks:
            if block.kind not in KINDS:
                raise ValueError(f"{name}:{block.line}: unknown generated block {block.kind!r}; known: "
                                 f"{', '.join(KINDS)}")
        return blocks


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def filled(text: str, name: str, render: Callable[[str], str]) -> str:
    """`text` with each generated block's body replaced by what `render(kind)` gives."""
    out, done = [], 0
    for block in Block.all_in(text, name):
        out += [text[done:block.start], render(block.kind)]
        done = block.end
    return "".join(out) + text[done:]


def stale_blocks(text: str, name: str, render: Callable[[str], str]) -> list[str]:
    """One message per block whose committed body differs from the generated one, with a unified diff."""
    problems = []
    for block in Block.all_in(text, name):
        committed, generated = text[block.start:block.end], render(block.kind)
        if committed != generated:
            diff = difflib.unified_diff(committed.splitlines(keepends=True), generated.splitlines(keepends=True),
                                        f"{name} (committed)", f"{name} (generated)")
            problems.append(f"{name}:{block.line}: generated block '{block.kind}' is stale (run `make docs`):\n"
                            + "".join(diff))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing each stale block")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        name, text = path.relative_to(ROOT).as_posix(), path.read_text()
        if args.check:
            stale += stale_blocks(text, name, rendered)
        elif (new := filled(text, name, rendered)) != text:
            write_text(path, new)
            print(f"docs: wrote {name}")
    for problem in stale:
        print(problem, file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
