"""Training snapshots: the state after each finished epoch, so an interrupted training stage resumes there.

DVC deletes a stage's outputs before it runs the stage (and DVC 3 has no checkpoint outputs), so snapshots
live outside them, in `.dvc/tmp/snapshots/` (git-ignored by DVC), or in the folder `FMNIST_SNAPSHOTS` names
(storage every node reaches, for multi-node runs). A snapshot's file name carries the digest of everything
that determines the run's numbers (the stage's params block, the seed, the worker count, the prepared data,
the code of the stage's declared deps): another run never resumes it, and says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml

from fmnist_seq.atomic import write_torch

FORMAT_VERSION = 1
SNAPSHOTS_ENV = "FMNIST_SNAPSHOTS"
DEFAULT_FOLDER = Path(".dvc") / "tmp" / "snapshots"
# Keys of a training block that change how a run is carried out, never its numbers.
NOT_IN_KEY = ("max_restarts",)


def snapshot_folder(cwd: Path | None = None) -> Path:
    """Where this workspace's snapshots go.

    `dvc exp run --queue` runs each experiment in a temporary copy, `<repo>/.dvc/tmp/exps/<tmp>/`, deleted
    afterwards: its snapshots go to the repository's own folder instead, so a queued experiment that is
    run again (same params) resumes too.
    """
    if os.environ.get(SNAPSHOTS_ENV):
        return Path(os.environ[SNAPSHOTS_ENV]).expanduser().resolve()
    cwd = (cwd or Path.cwd()).resolve()
    queued = re.match(r"(.+)/\.dvc/tmp/exps/[^/]+$", cwd.as_posix())
    return (Path(queued.group(1)) if queued else cwd) / DEFAULT_FOLDER


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def declared_code(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """The Python files among the stage's deps in dvc.yaml; without that file, the package's own files."""
    try:
        deps = yaml.safe_load(dvc_yaml.read_text())["stages"][stage]["deps"]
        return sorted(d for d in deps if isinstance(d, str) and d.endswith(".py"))
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        package = Path(__file__).parent
        return sorted(str(p) for p in [*package.glob("*.py"), package.parents[1] / "stages" / "train.py"] if p.exists())


@dataclass(frozen=True)
class RunKey:
    """What determines a training run's numbers; a snapshot resumes only a run with the same key."""

    stage: str
    params: dict[str, Any]  # the stage's params block, as validated
    seed: int
    workers: int
    data: dict[str, str] = field(default_factory=dict)  # prepared file -> SHA-256
    code: dict[str, str] = field(default_factory=dict)  # code file -> SHA-256

    @classmethod
    def of(cls, stage: str, params: dict[str, Any], seed: int, workers: int, data_files: Iterable[Path],
           code_files: Iterable[str]) -> RunKey:
        return cls(stage=stage, params={k: v for k, v in params.items() if k not in NOT_IN_KEY}, seed=seed,
                   workers=workers, data={Path(p).name: file_sha256(Path(p)) for p in data_files},
                   code={str(p): file_sha256(Path(p)) for p in code_files if Path(p).is_file()})

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def differences(self, other: dict[str, Any]) -> list[str]:
        """What differs between this run and the one `other` (a stored key) describes, in words."""
        found = [f"{self.stage}.{k} {_flat(other.get('params', {})).get(k)!r} -> {v!r}"
                 for k, v in _flat(self.params).items() if _flat(other.get("params", {})).get(k) != v]
        if other.get("seed") != self.seed:
            found.append(f"seed {other.get('seed')} -> {self.seed}")
        if other.get("workers") != self.workers:
            found.append(f"workers {other.get('workers')} -> {self.workers}")
        found += [f"prepared data ({name}) changed" for name, h in self.data.items() if other.get("data", {}).get(name) != h]
        found += [f"code ({path}) changed" for path, h in self.code.items() if other.get("code", {}).get(path) != h]
        return found or ["its run key differs"]


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Snapshots:
    """The snapshot of one training run: load it to resume, save it after each epoch, remove it when done."""

    def __init__(self, key: RunKey, folder: Path, log: Callable[[str], None] = print):
        self.key = key
        self.folder = folder
        self.path = folder / f"{key.stage}-{key.digest[:16]}.pt"
        self.log = log
        self._saved = False

    def load(self) -> dict[str, Any] | None:
        """The saved training state of this very run, or None (saying why when another run's is there)."""
        if not self.path.exists():
            self._explain_others()
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
            if blob.get("format_version") != FORMAT_VERSION or blob.get("key") != asdict(self.key):
                raise ValueError("it belongs to another run or format")
            state = blob["state"]
            saved_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(blob["saved_at"]))
        except Exception as exc:  # truncated, corrupt, foreign: never worth a traceback, the run starts afresh
            self.log(f"{self.key.stage}: warning: ignoring unreadable snapshot {self.path} "
                     f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}); "
                     "starting afresh")
            return None
        epochs = self.key.params.get("epochs")
        restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        after = (f", restart {restarts} of {os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')} after a worker failed"
                 if restarts not in ("", "0") else "")
        self.log(f"{self.key.stage}: resuming at epoch {state['epoch'] + 1} of {epochs} from {self.path} "
                 f"(snapshot of {saved_at}{after})")
        return state

    def _explain_others(self) -> None:
        others = sorted(self._others(), key=lambda p: p.stat().st_mtime)
        if not others:
            return
        newest = others[-1]
        try:
            stored = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)["key"]
            why = "; ".join(self.key.differences(stored))
        except Exception as exc:
            why = f"it cannot be read ({type(exc).__name__})"
        self.log(f"{self.key.stage}: not resuming {newest}: {why}; starting afresh (this run's first epoch "
                 "replaces it)")

    def _others(self) -> list[Path]:
        return [p for p in self.folder.glob(f"{self.key.stage}-*.pt") if p != self.path]

    def save(self, state: dict[str, Any]) -> None:
        """Atomically: a kill during the write leaves the previous snapshot. The first save replaces the stage's
        snapshots of other runs: one stage, one snapshot to resume."""
        write_torch(self.path, {"format_version": FORMAT_VERSION, "key": asdict(self.key), "saved_at": time.time(),
                                "state": state})
        if not self._saved:
            for other in self._others():
                other.unlink(missing_ok=True)
            self._saved = True

    def saved_epoch(self) -> int | None:
        """The last finished epoch on disk (None when there is none)."""
        try:
            return int(torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)["state"]["epoch"])
        except Exception:
            return None

    def describe_saved(self) -> str:
        """What an interrupted or failed run leaves to resume, in words, for its last line."""
        epoch = self.saved_epoch()
        if epoch is None:
            return "no epoch had finished, so nothing is kept to resume"
        return (f"epochs 1-{epoch} are saved in {self.path}: `dvc repro` resumes at epoch {epoch + 1}"
                if epoch < self.key.params.get("epochs", epoch + 1) else
                f"all epochs are saved in {self.path}: `dvc repro` writes the outputs from it")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        for leftover in self.folder.glob(f".{self.path.name}.*.tmp"):  # a write cut short by a kill
            leftover.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # other runs' snapshots are still there
