"""What data-parallel workers buy on this machine: one epoch of each training stage per worker count.

For each model, global batch size and worker count it runs the training stage itself (`stages/train.py`,
launching its workers as `dvc repro` does) for one epoch on the prepared data, in a scratch folder, and
prints a JSON line with the epoch's images/s from the stage's timings.json. Configurations run one after the
other in the same invocation, so the ratios compare like with like; run it alone on the machine.

  python bench/data_parallel.py [--models gru rnn] [--batch-sizes 128 256] [--workers 1 2] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from fmnist_seq.config import read_params

ROOT = Path(__file__).resolve().parents[1]


def one_run(model: str, batch_size: int, workers: int, epochs: int, data: Path) -> dict:
    params = read_params(ROOT / "params.yaml")
    params[f"train_{model}"].update(batch_size=batch_size, workers=workers, epochs=epochs)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "--model", model, "--data", str(data),
                        "--checkpoint", str(work / "model.pt"), "--live-dir", str(work / "live"),
                        "--timings", str(work / "timings.json")], cwd=work, check=True, stdout=subprocess.DEVNULL)
        timings = json.loads((work / "timings.json").read_text())
    return {"model": model, "batch_size": batch_size, "workers": timings["workers"],
            "threads_per_worker": timings["threads_per_worker"], "epochs": epochs,
            "images_per_s": timings["images_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("rnn", "gru"), default=["gru", "rnn"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default: the params.yaml batch and twice it")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    args = parser.parse_args()
    params = read_params(ROOT / "params.yaml")
    for model in args.models:
        default_batch = params[f"train_{model}"]["batch_size"]
        for batch_size in args.batch_sizes or [default_batch, 2 * default_batch]:
            rates = {}
            for workers in args.workers:
                result = one_run(model, batch_size, workers, args.epochs, args.data.resolve())
                rates[workers] = result["images_per_s"]
                if 1 in rates:
                    result["vs_1_worker"] = round(result["images_per_s"] / rates[1], 2)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
