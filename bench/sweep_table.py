"""Tabulate a sweep of DVC experiments: what each changed, its test accuracy, its size, its training time.

Reads `dvc exp show --json` (the declared metrics: test accuracy and loss, the selected epoch, parameters)
and, from each experiment's own commit, the timings file its training stage wrote (wall times are not
declared metrics, so `dvc exp show` does not carry them). Prints a Markdown table per model, best test
accuracy first; the params column lists what the experiment changed against its baseline commit.

Usage, after a queued sweep (see docs/accuracy.md):
  python bench/sweep_table.py --model gru [--all-commits] [--name-prefix var-] [--out variants_table.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _record(entry: dict) -> dict:
    data = entry.get("data") or {}
    return {"name": entry.get("name") or (data.get("rev") or entry.get("rev", ""))[:7],
            "rev": data.get("rev") or entry.get("rev"),
            "params": flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {})),
            "metrics": {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()}}


def experiments(shown: list[dict]) -> list[dict]:
    """Flatten `dvc exp show --json` into records that know their baseline's params (finished ones only: a
    queued or running experiment shows its baseline's metrics)."""
    found = []
    for commit in shown:
        baseline = _record(commit)
        for group in commit.get("experiments") or []:
            if ((group.get("executor") or {}).get("state") or "success") != "success":
                continue
            for rev in group.get("revs") or []:
                record = _record(rev)
                if record["params"] and record["metrics"]:
                    found.append({**record, "baseline": baseline["params"]})
    return found


def timings(rev: str, model: str) -> dict:
    """The experiment's results/train/<model>/timings.json, read from its commit (empty if it has none)."""
    shown = subprocess.run(["git", "show", f"{rev}:results/train/{model}/timings.json"], capture_output=True,
                           text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else {}


def rows_for(model: str, exps: list[dict]) -> list[dict]:
    rows = []
    for exp in exps:
        evaluated = exp["metrics"].get("results/evaluate/metrics.json", {}).get(model)
        if not evaluated:
            continue
        changed = {key.removeprefix(f"train_{model}."): value for key, value in exp["params"].items()
                   if key.startswith(f"train_{model}.") and exp["baseline"].get(key) != value}
        if not changed and exp["params"] != exp["baseline"]:
            continue  # the other model's experiment: this one was not retrained
        timing = timings(exp["rev"], model)
        rows.append({"experiment": exp["name"], "changed": changed, **evaluated,
                     "train_seconds": timing.get("train_seconds"), "workers": timing.get("workers")})
    return sorted(rows, key=lambda r: r["test_accuracy"], reverse=True)


def table(model: str, rows: list[dict]) -> str:
    lines = [f"| {model.upper()} experiment | changed params | test acc | test loss | valid acc | selected epoch | "
             "parameters | train time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        changed = ", ".join(f"`{k}={v}`" for k, v in sorted(r["changed"].items())) or "(baseline)"
        workers = f"{r['workers']} worker" + ("s" if r["workers"] != 1 else "")
        seconds = f"{r['train_seconds']:.0f} s ({workers})" if r["train_seconds"] else "–"
        lines.append(f"| {r['experiment']} | {changed} | {100 * r['test_accuracy']:.2f}% | {r['test_loss']:.4f} | "
                     f"{100 * r['valid_accuracy']:.2f}% | {r['selected_epoch']} | {r['parameters']:,} | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("rnn", "gru", "lstm"), required=True)
    parser.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD")
    parser.add_argument("--name-prefix", default="", help="only experiments whose name starts with this")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    command = ["dvc", "exp", "show", "--json"] + (["--all-commits"] if args.all_commits else [])
    shown = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    exps = [e for e in experiments(shown) if e["name"].startswith(args.name_prefix)]
    rows = rows_for(args.model, exps)
    if not rows:  # a queue still running, or experiments of another clone (they stay where they ran)
        sys.exit(f"sweep_table.py: no finished experiment{f' named {args.name_prefix}*' if args.name_prefix else ''} "
                 f"retrained the {args.model} in this clone; `dvc queue status` shows what is still queued or running")
    text = table(args.model, rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
