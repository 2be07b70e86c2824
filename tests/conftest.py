"""Shared fixtures: a tiny synthetic Fashion-MNIST in IDX .gz form, and helpers to run the pipeline."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil
import pytest
import torch
import yaml

from fmnist_seq import interrupts
from fmnist_seq.atomic import write_bytes
from fmnist_seq.checkpoint import save_checkpoint
from fmnist_seq.config import DownloadConfig, ExportConfig, FileSpec, ModelConfig, TrainConfig, as_dict
from fmnist_seq.data import RAW_FILES, Normalization, Split, prepare_splits, read_raw, save_prepared
from fmnist_seq.download import fetch_all
from fmnist_seq.onnx_export import ModelToExport, export_checkpoint
from fmnist_seq.parity import LabelledImages
from fmnist_seq.quantization import quantize_checked
from fmnist_seq.training import TrainingJob, fit

ROOT = Path(__file__).resolve().parents[1]


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX ubyte encoding: magic 0x08 + ndim, big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: a decompression bomb's header costs a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def foreign_onnx_model(path: Path, input_name: str = "pixels", input_type: int = 2, dims: tuple = ("batch", 28, 28),
                       output_name: str = "probabilities", classes: int = 10, class_names: list | None = None,
                       extra_input: bool = False) -> str:
    """A tiny valid ONNX model that may break this project's contract: input (input_type 2 is uint8) -> Cast ->
    Flatten -> MatMul -> Softmax -> output; written to `path`."""
    from onnx import TensorProto, checker, helper

    features = int(np.prod([d for d in dims[1:]]))
    weights = helper.make_tensor("w", TensorProto.FLOAT, [features, classes], np.zeros(features * classes).tolist())
    nodes = [helper.make_node("Cast", [input_name], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["f"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["scores"]),
             helper.make_node("Softmax", ["scores"], [output_name])]
    inputs = [helper.make_tensor_value_info(input_name, input_type, list(dims))]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("temperature", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, "foreign", inputs,
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", classes])],
                              [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    if class_names is not None:
        helper.set_model_props(model, {"class_names": json.dumps(class_names)})
    checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return str(path)


def pillow_pad_and_resize(gray: np.ndarray) -> np.ndarray:
    """What fmnist-predict and the page compute, the slow way: pad to a centred square with 0, then Pillow's
    LANCZOS resize to 28x28 (the square takes side**2 bytes: only for small test images)."""
    from PIL import Image

    height, width = gray.shape
    side = max(height, width)
    square = Image.new("L", (side, side), 0)
    square.paste(Image.fromarray(gray), ((side - width) // 2, (side - height) // 2))
    return np.asarray(square.resize((28, 28), Image.Resampling.LANCZOS))


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Easy, learnable images: class c lights up rows 2c+3..2c+5 (light item on a dark background)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 * label + 3: 2 * label + 6, 4:24] = rng.integers(180, 256, size=(3, 20))
    return images.astype(np.uint8)


# The share of training images (so also of validation ones) the pipeline's tiny projects get with a wrong label,
# as real data has some: no model is then right on every validation image, which would leave the calibrate stage
# no finite temperature to fit (the NLL falls without end as T -> 0 when every answer is right).
MISLABELED = 0.1


def make_dataset(folder: Path, per_class_train: int = 30, per_class_test: int = 10, seed: int = 0,
                 mislabeled: float = 0.0) -> dict:
    """Write the four .gz files into `folder`; return the params.yaml download.files block for them. `mislabeled`:
    the share of training images whose labels are passed round among themselves (each class keeps its count)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        arrays[f"{part}_images"] = synthetic_images(labels, seed + len(part))
        if part == "train" and mislabeled:
            moved = rng.choice(len(labels), round(mislabeled * len(labels)), replace=False)
            labels[moved] = labels[np.roll(moved, 1)]
        arrays[f"{part}_labels"] = labels
    files = {}
    for role, name in RAW_FILES.items():
        raw = idx_bytes(arrays[role])
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        files[name] = {"sha256": hashlib.sha256(raw).hexdigest(), "count": len(arrays[role])}
    return files


@pytest.fixture
def own_stop_handling(monkeypatch):
    """For code that installs this process's signal handlers, unraisable hook and stop state (interrupts.py):
    the test starts with fresh ones and gives pytest's back."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(interrupts, "_stop", interrupts._Stop())
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.fixture
def synthetic_dir(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "mirror"
    return folder, make_dataset(folder, mislabeled=MISLABELED)


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


def web_serve_module():
    """examples/web/serve.py, the server of `make web` (a script beside the page, not part of the package)."""
    spec = importlib.util.spec_from_file_location("web_serve", ROOT / "examples" / "web" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def serve_page(root: Path) -> Iterator[str]:
    """`make web`'s server on `root` (laid out like the repository), on a free port; yields the base URL."""
    server = web_serve_module().make_server(root, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
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


# Small models and short runs: the whole DAG in well under a minute on two cores. The GRU trains with two
# data-parallel workers (launched by the stage), the others in the stage's own process; the LSTM distills from
# the CNN teacher, as in params.yaml.
FAST_PARAMS = {
    "train_rnn": {"model": {"hidden_size": 16, "head_hidden": 32}, "epochs": 3, "batch_size": 32, "lr": 0.01,
                  "workers": 1},
    "train_gru": {"model": {"hidden_size": 16}, "epochs": 3, "batch_size": 32, "lr": 0.01, "workers": 2},
    "train_teacher": {"model": {"hidden_size": 4, "num_layers": 2, "head_hidden": 16}, "epochs": 2, "batch_size": 32,
                      "lr": 0.01},
    "train_lstm": {"model": {"hidden_size": 8, "head_hidden": 32}, "epochs": 3, "batch_size": 32, "lr": 0.01},
    "evaluate": {"batch_size": 64, "misclassified_shown": 8},
    "export": {"bench_seconds": 0.1, "bench_batch_size": 32},
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


VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` as a user with the venv activated would (unless `env` says otherwise)."""
    if env is None:
        env = {**os.environ, "PATH": str(VENV_BIN) + os.pathsep + os.environ["PATH"], "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "dvc"), *args], cwd=cwd, check=check)


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


@pytest.fixture(scope="session")
def reproduced_once(tmp_path_factory) -> Iterator[tuple[Path, subprocess.CompletedProcess]]:
    """A tiny project after its first full `dvc repro`, and what that repro printed: the tests that start from
    a reproduced project copy it (copy_project) instead of training the whole DAG again each (about 75 s on two
    cores). Its mirror is served for the whole session, so a copy's `dvc repro -f` downloads as the first did.
    Uncommitted: each test commits what it needs."""
    root = tmp_path_factory.mktemp("reproduced-once")
    files = make_dataset(root / "mirror", mislabeled=MISLABELED)
    with serve(root / "mirror") as url:
        project = make_project(root / "project", url, files)
        yield project, dvc("repro", cwd=project)


def copy_project(source: Path, dest: Path) -> Path:
    """A copy of a project with its git history and DVC cache; DVC re-hashes the copied files on first use
    (their inodes differ) and finds them as dvc.lock records them."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


# --- the training stage's script, run as a process on prepared synthetic data -------------------

def prepare_synthetic(root: Path, per_class_train: int) -> Path:
    """Synthetic data downloaded and prepared the way the stages do it; returns the prepared folder."""
    files = make_dataset(root / "mirror", per_class_train=per_class_train)
    cfg = DownloadConfig(sources=[str(root / "mirror")], files={n: FileSpec(**s) for n, s in files.items()})
    fetch_all(cfg, root / "raw")
    splits, norm = prepare_splits(read_raw(root / "raw"), 0.1, seed=0)
    save_prepared(splits, norm, root / "prepared")
    return root / "prepared"


def train_project(folder: Path, **train_gru) -> Path:
    """A folder with a params.yaml whose train_gru block has the fast settings plus `train_gru`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    deep_update(params, {"train_gru": FAST_PARAMS["train_gru"]})
    deep_update(params, {"train_gru": train_gru})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def train_command(folder: Path, data: Path) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / "train.py"), "--model", "gru", "--data", str(data),
            "--checkpoint", str(folder / "gru.pt"), "--live-dir", str(folder / "live"),
            "--timings", str(folder / "timings.json")]


def train_stage(folder: Path, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(folder, data), cwd=folder, capture_output=True, text=True, timeout=300)


def workers_of(process: psutil.Process) -> dict[int, psutil.Process]:
    """The training workers below `process`, by rank (torchrun's RANK in their environment)."""
    found = {}
    for child in process.children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if rank is not None:
            found[int(rank)] = child
    return found


# --- tiny trained and exported models, shared by the export, predict and Node.js tests ----------

MODELS = {
    "rnn": ModelConfig(cell="rnn", hidden_size=16, bidirectional=True, head="all_steps", head_hidden=32, dropout=0.1),
    "gru": ModelConfig(cell="gru", hidden_size=16, num_layers=2, dropout=0.1),
    "lstm": ModelConfig(cell="lstm", hidden_size=8, num_layers=2, bidirectional=True, head="all_steps", head_hidden=32,
                        dropout=0.1),
}
NORM = Normalization(0.2, 0.3)
# Temperatures the fixture's files are exported with, as the calibrate stage would give them: below and above 1.
TEMPERATURES = {"rnn": 0.8, "gru": 1.25, "lstm": 0.6}


def easy_split(n_per_class: int, seed: int) -> Split:
    """Synthetic uint8 images, n_per_class of each class."""
    labels = np.repeat(np.arange(10), n_per_class)
    return Split(torch.from_numpy(synthetic_images(labels, seed)), torch.from_numpy(labels).long(),
                 torch.arange(len(labels)))


def train_tiny(name: str, train: Split, valid: Split, path: Path, epochs: int = 6) -> TrainConfig:
    """Train one of MODELS the way the training stage does and save its checkpoint at `path`."""
    cfg = TrainConfig(model=MODELS[name], lr=0.01, schedule="onecycle", epochs=epochs, batch_size=32, device="cpu",
                      workers=1)
    result = fit(TrainingJob(cfg, train, valid, NORM, 0), log=lambda _: None)
    save_checkpoint(path, result.model, as_dict(cfg), result.selected_epoch,
                    {"loss": result.selected.valid_loss, "accuracy": result.selected.valid_accuracy},
                    [r.results() for r in result.history])
    return cfg


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """The three tiny models trained, checkpointed and exported the way the export stage does it, int8 included."""
    out = tmp_path_factory.mktemp("onnx")
    train, valid, test = easy_split(20, 0), easy_split(6, 2), easy_split(26, 1)  # 260 test images: over a batch of 256
    pixels, labels = test.images.numpy(), test.labels.numpy()
    valid_images = LabelledImages("valid", valid.images.numpy(), valid.labels.numpy())
    test_images = LabelledImages("test", pixels, labels)
    cfg = ExportConfig(models=list(MODELS), exporters={name: "dynamo" for name in MODELS}, bench_seconds=0.05,
                       bench_batch_size=32, quantize=list(MODELS), quantize_max_accuracy_drop=0.05)
    figures = {}
    for name in MODELS:
        train_tiny(name, train, valid, out / f"{name}.pt")
        model = ModelToExport.load(name, out / f"{name}.pt", MODELS[name], TEMPERATURES[name])
        result = export_checkpoint(model, test_images, cfg, out, ["CPUExecutionProvider"], log=lambda _: None)
        int8 = quantize_checked(result.proto, valid_images, test_images, cfg.quantize_max_accuracy_drop)
        if int8.kept:
            write_bytes(out / f"{name}.int8.onnx", int8.model.SerializeToString())
        figures[name] = {**result.figures, "test_accuracy": result.test_accuracy, "int8": int8.figures}
    return out, figures, pixels, labels
