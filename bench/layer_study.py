"""Tabulate and plot the layer study from `dvc exp show --json`: does a deeper or wider model overfit more?

Run the sweep first (see docs/layer_study.md), then:
  python bench/layer_study.py --epochs 4 --out docs
It picks the experiments whose swept model was trained for --epochs epochs with the baseline's recipe,
and writes docs/layer_study_table.md (the tables that docs/layer_study.md quotes) and
docs/layer_study.png (test accuracy and train-valid gap).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


SWEPT = ("num_layers", "hidden_size")


def _record(entry: dict) -> dict:
    data = entry.get("data") or {}
    return {"name": entry.get("name") or entry.get("rev", "")[:7],
            "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {}),
            "metrics": {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()}}


def experiments(raw: list[dict]) -> list[dict]:
    """Flatten dvc exp show --json into {name, params, metrics, baseline} records."""
    found = []
    for commit in raw:
        baseline = _record(commit)["params"]
        for group in commit.get("experiments") or []:
            for rev in group.get("revs") or []:
                record = _record(rev)
                if record["params"] and record["metrics"]:
                    found.append({**record, "baseline": baseline})
    return found


def _recipe(block: dict) -> dict:
    """A train block without the swept keys and epochs: experiments of one sweep share it."""
    model = {k: v for k, v in block.get("model", {}).items() if k not in SWEPT}
    return {**{k: v for k, v in block.items() if k not in ("model", "epochs")}, "model": model}


def rows_for(model: str, exps: list[dict], epochs: int) -> list[dict]:
    rows = []
    for exp in exps:
        block = exp["params"].get(f"train_{model}", {})
        # The sweep's runs: shorter training, otherwise the baseline's recipe (not e.g. report-recipe).
        if block.get("epochs") != epochs or _recipe(block) != _recipe(exp["baseline"].get(f"train_{model}", {})):
            continue
        train = exp["metrics"].get(f"results/train/{model}/metrics.json", {})
        evaluated = exp["metrics"].get("results/evaluate/metrics.json", {}).get(model, {})
        if not train or not evaluated:
            continue
        rows.append({
            "experiment": exp["name"], "layers": block["model"]["num_layers"], "hidden": block["model"]["hidden_size"],
            "train_accuracy": train["train"]["accuracy"], "valid_accuracy": evaluated["valid"]["accuracy"],
            "test_accuracy": evaluated["test"]["accuracy"], "test_loss": evaluated["test"]["loss"],
            "gap": train["train"]["accuracy"] - evaluated["valid"]["accuracy"],
            "train_seconds": train.get("train_seconds"),
        })
    return sorted(rows, key=lambda r: (r["hidden"], r["layers"]))


def table(model: str, rows: list[dict]) -> str:
    lines = [f"| {model.upper()} layers | hidden | train acc (last epoch) | valid acc (selected) | "
             "train − valid | test acc | test loss | train time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layers']} | {r['hidden']} | {100 * r['train_accuracy']:.2f}% | "
                     f"{100 * r['valid_accuracy']:.2f}% | {100 * r['gap']:+.2f} pts | {100 * r['test_accuracy']:.2f}% | "
                     f"{r['test_loss']:.4f} | {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def plot(gru: list[dict], rnn: list[dict], path: Path) -> None:
    fig, (ax_acc, ax_gap) = plt.subplots(1, 2, figsize=(11, 4))
    series = [(f"GRU h={h}", [r for r in gru if r["hidden"] == h]) for h in sorted({r["hidden"] for r in gru})]
    series.append(("RNN (bidir.) h=128", rnn))
    for label, rows in series:
        layers = [r["layers"] for r in rows]
        ax_acc.plot(layers, [100 * r["test_accuracy"] for r in rows], "o-", label=label)
        ax_gap.plot(layers, [100 * r["gap"] for r in rows], "o-", label=label)
    for ax, title, ylabel in ((ax_acc, "Test accuracy", "%"), (ax_gap, "Train − validation accuracy", "points")):
        ax.set_xlabel("recurrent layers")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_xticks([1, 2, 3])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs the sweep trained for (default 4)")
    parser.add_argument("--out", default="docs", help="folder for layer_study_table.md and layer_study.png")
    args = parser.parse_args()
    raw = json.loads(subprocess.run(["dvc", "exp", "show", "--all-commits", "--json"], capture_output=True, text=True,
                                    check=True).stdout)
    exps = experiments(raw)
    gru, rnn = rows_for("gru", exps, args.epochs), rows_for("rnn", exps, args.epochs)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "layer_study_table.md").write_text(table("gru", gru) + "\n\n" + table("rnn", rnn) + "\n")
    plot(gru, rnn, out / "layer_study.png")
    print(table("gru", gru))
    print()
    print(table("rnn", rnn))


if __name__ == "__main__":
    main()
