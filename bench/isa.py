"""Do the trained weights depend on the processor's instruction sets? fp32 and bf16, each model, three profiles.

Another machine of the pool may lack avx512_bf16, or AVX-512 altogether. This machine imitates one by limiting
what each library may use, through the environment variables they read at start-up:
  native    nothing limited
  no-bf16   oneDNN below AVX512_CORE_BF16 (ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI): bf16 emulated with AVX-512
  avx2      ATen's kernels at AVX2 (ATEN_CPU_CAPABILITY=avx2), oneDNN at AVX2, and MKL (the BLAS under fp32
            matmuls) at AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2): a machine without AVX-512
For each model, precision and profile it runs the training stage itself (its params.yaml block, workers included)
for one epoch on the first --images training images from the same initial weights, and hashes the trained
weights (SHA-256 of every tensor's bytes in name order). Prints one JSON line per model and precision with each
profile's hash and whether it equals the native one, plus one line per profile saying which ISA oneDNN and ATen
reported; --out appends them (results/bench/isa.jsonl, turned into docs/performance.md's table).

  python bench/isa.py [--models rnn gru lstm teacher] [--images 2048]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from fmnist_seq.config import read_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import subset  # noqa: E402  (bench/precision.py: the same first-N-images folder)

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {
    "native": {},
    "no-bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
# What each library reports it uses: oneDNN's verbose "isa" line (a bf16 matmul and an fp32 convolution go through
# oneDNN on the CPU), and ATen's kernel level.
PROBE = """
import torch
x = torch.randn(64, 64)
with torch.autocast("cpu", dtype=torch.bfloat16):
    torch.mm(x, x)
torch.nn.functional.conv2d(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3))
print("aten:" + torch.backends.cpu.get_cpu_capability())
"""


def environment(profile: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                                              "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_VERBOSE"}}
    return {**env, **PROFILES[profile]}


def reported_isa(profile: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**environment(profile), "ONEDNN_VERBOSE": "1"},
                         check=True, capture_output=True, text=True).stdout
    isa = re.search(r"isa:([^\n,]+)", out)
    aten = re.search(r"aten:(\S+)", out)
    return {"onednn_isa": isa.group(1).strip() if isa else "not called",
            "aten_capability": aten.group(1) if aten else "?"}


def weights_hash(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train_once(model: str, precision: str, profile: str, data: Path) -> str:
    params = read_params(ROOT / "params.yaml")
    block = params[f"train_{model}"]
    # The lstm without its teacher: the teacher's own weights are checked on their own line
    block.update(precision=precision, epochs=1, patience=0, distill={**block["distill"], "alpha": 0.0})
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        done = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "--model", model, "--data",
                               str(data), "--checkpoint", str(work / "model.pt"), "--live-dir", str(work / "live"),
                               "--timings", str(work / "timings.json")], cwd=work, env=environment(profile),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:  # a profile whose libraries cannot train this model: recorded, not fatal
            errors = [line for line in done.stderr.splitlines() if "Error" in line]
            return "failed: " + (errors[0].strip() if errors else f"exit {done.returncode}")
        return weights_hash(work / "model.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rnn", "gru", "lstm", "teacher"])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--images", type=int, default=2048, help="training images of the one epoch (default 2048)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args()
    lines = [{"profile": name, "environment": PROFILES[name], **reported_isa(name)} for name in PROFILES]
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "prepared"
        subset(args.data, args.images, data)
        for model in args.models:
            for precision in args.precisions:
                hashes = {name: train_once(model, precision, name, data) for name in PROFILES}
                lines.append({"model": model, "precision": precision, "images": args.images,
                              "weights_sha256": {name: h if h.startswith("failed") else h[:16]
                                                 for name, h in hashes.items()},
                              "same_as_native": {name: h == hashes["native"] for name, h in hashes.items()}})
                print(json.dumps(lines[-1]), flush=True)
    for line in lines[:len(PROFILES)]:
        print(json.dumps(line), flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
