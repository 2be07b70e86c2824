"""download: fetch and verify the four Fashion-MNIST IDX files into data/raw (decompressed)."""

import argparse

import _bootstrap  # noqa: F401  (first: this checkout's code, and a clear error under the wrong Python)

from fmnist_seq.config import DownloadConfig, load_block
from fmnist_seq.data import RAW_FILES
from fmnist_seq.download import fetch_all
from fmnist_seq.errors import ParamsError
from fmnist_seq.stage import run_stage


def download(out: str) -> None:
    cfg = load_block(DownloadConfig, "download")
    if set(cfg.files) != set(RAW_FILES.values()):
        raise ParamsError(f"params.yaml: download.files must list exactly {sorted(RAW_FILES.values())}, "
                          f"got {sorted(cfg.files)}")
    report = fetch_all(cfg, out)
    for name, source in report.used.items():
        skipped = len(report.rejected[name])
        print(f"{name}: verified, from {source}" + (f" ({skipped} source(s) rejected first)" if skipped else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder for the verified, decompressed IDX files")
    args = parser.parse_args()
    run_stage("download", lambda: download(args.out), outputs=[])  # fetch_all writes all-or-nothing itself


if __name__ == "__main__":
    main()
