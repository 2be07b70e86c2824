"""Shared fixtures: a tiny synthetic Fashion-MNIST in IDX .gz form, and helpers to run the pipeline."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import yaml

from fmnist_seq.checkpoint import load_checkpoint, save_checkpoint
from fmnist_seq.config import ExportConfig, ModelConfig, TrainConfig
from fmnist_seq.data import Normalization, Split
from fmnist_seq.onnx_export import export_checkpoint, raw_pixels
from fmnist_seq.training import fit

ROOT = Path(__file__).resolve().parents[1]
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX ubyte encoding: magic 0x08 + ndim, big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Easy, learnable images: class c lights up rows 2c+3..2c+5 (light item on a dark background)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 * label + 3: 2 * label + 6, 4:24] = rng.integers(180, 256, size=(3, 20))
    return images.astype(np.uint8)


def make_dataset(folder: Path, per_class_train: int = 30, per_class_test: int = 10, seed: int = 0) -> dict:
    """Write the four .gz files into `folder`; return the params.yaml download.files block for them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        arrays[f"{part}_labels"] = labels
        arrays[f"{part}_images"] = synthetic_images(labels, seed + len(part))
    files = {}
    for role, name in NAMES.items():
        raw = idx_bytes(arrays[role])
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        files[name] = {"sha256": hashlib.sha256(raw).hexdigest(), "count": len(arrays[role])}
    return files


@pytest.fixture
def synthetic_dir(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "mirror"
    return folder, make_dataset(folder)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_mirror(synthetic_dir):
    """The synthetic .gz files served on 127.0.0.1; yields (url, folder, files spec)."""
    folder, files = synthetic_dir
    with serve(folder) as url:
        yield url, folder, files


# Small models and short runs: the whole DAG in well under a minute on two cores.
FAST_PARAMS = {
    "train_rnn": {"model": {"hidden_size": 16, "head_hidden": 32}, "epochs": 3, "batch_size": 32, "lr": 0.01},
    "train_gru": {"model": {"hidden_size": 16}, "epochs": 3, "batch_size": 32, "lr": 0.01},
    "evaluate": {"batch_size": 64, "misclassified_shown": 8},
    "export": {"bench_seconds": 0.05, "bench_batch_size": 32},
}


def deep_update(target: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value
    return target


def write_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_update(params, changes), sort_keys=False))


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": env_bin + os.pathsep + os.environ["PATH"], "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, check=check)


def make_project(dest: Path, url: str, files: dict) -> Path:
    """A fresh git + DVC copy of the project at `dest` whose download source is `url`."""
    dest.mkdir(parents=True)
    for item in ("dvc.yaml", "params.yaml", "stages", "src"):
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, dest / item)
    write_params(dest, deep_update({"download": {"sources": [url], "files": files, "timeout_s": 5, "retries": 0}},
                                   FAST_PARAMS))
    run(["git", "init", "-q", "-b", "main"], cwd=dest)
    run(["git", "config", "user.email", "test@example.com"], cwd=dest)
    run(["git", "config", "user.name", "test"], cwd=dest)
    dvc("init", "-q", cwd=dest)
    dvc("config", "core.analytics", "false", cwd=dest)
    commit(dest, "init")
    return dest


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", message], cwd=project)


@pytest.fixture
def project(tmp_path: Path, http_mirror) -> Path:
    url, _, files = http_mirror
    return make_project(tmp_path / "project", url, files)


# --- tiny trained and exported models, shared by the export, predict and Node.js tests ----------

MODELS = {
    "rnn": ModelConfig(cell="rnn", hidden_size=16, bidirectional=True, head="all_steps", head_hidden=32, dropout=0.1),
    "gru": ModelConfig(cell="gru", hidden_size=16, num_layers=2, dropout=0.1),
}
NORM = Normalization(0.2, 0.3)


def easy_split(n_per_class: int, seed: int) -> Split:
    """Normalized synthetic images, n_per_class of each class."""
    labels = np.repeat(np.arange(10), n_per_class)
    pixels = torch.from_numpy(synthetic_images(labels, seed))
    return Split(NORM.apply(pixels), torch.from_numpy(labels).long(), torch.arange(len(labels)))


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Both tiny models trained, checkpointed and exported the way the export stage does it."""
    out = tmp_path_factory.mktemp("onnx")
    train, test = easy_split(20, 0), easy_split(26, 1)  # 260 test images: more than one batch of 256
    pixels = raw_pixels(test.images, NORM.mean, NORM.std)
    cfg = ExportConfig(models=["rnn", "gru"], exporters={"rnn": "dynamo", "gru": "dynamo"}, bench_seconds=0.05,
                       bench_batch_size=32, quantize=["rnn", "gru"], quantize_max_accuracy_drop=0.05)
    figures = {}
    for name, model in MODELS.items():
        train_cfg = TrainConfig(model=model, lr=0.01, schedule="onecycle", epochs=6, batch_size=32, device="cpu")
        result = fit(train_cfg, train, test, seed=0, log=lambda _: None)
        save_checkpoint(out / f"{name}.pt", result, train_cfg, NORM)
        ckpt = load_checkpoint(out / f"{name}.pt", model)
        figures[name] = export_checkpoint(name, ckpt, cfg, pixels, test.labels.numpy(), out, ["CPUExecutionProvider"],
                                          log=lambda _: None)
    return out, figures, pixels, test.labels.numpy()
