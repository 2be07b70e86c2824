"""Training snapshots: the state after each finished epoch, so an interrupted training stage resumes there.

DVC deletes a stage's outputs before it runs the stage (and DVC 3 has no checkpoint outputs), so snapshots
live outside them, in `.dvc/tmp/snapshots/` (git-ignored by DVC), or in the folder `FMNIST_SNAPSHOTS` names
(storage every node reaches, for multi-node runs). A snapshot's file name carries the digest of everything
that determines the run's numbers (its run key): another run never resumes it, and says why.

Several runs may share the folder at once (`dvc queue start -j 2`, two workspaces with one FMNIST_SNAPSHOTS):
each run holds a lock on its own `<snapshot>.lock` file for as long as it lives, and a run clears away only
the files of other runs (snapshot, lock, a write cut short, an unreadable snapshot set aside) whose lock
nobody holds and that nobody has written for STALE_AFTER_DAYS. The kernel releases a lock when its process
dies, however it dies, so a live run's snapshot never goes; a killed run's stays for its own rerun to resume
(two queued experiments killed together each resume, whichever reruns first), and goes once it is left a week
unused, so the folder does not fill up with every params change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import yaml

from fmnist_seq.atomic import write_torch
from fmnist_seq.config import PER_RUN, RECIPE, TrainConfig, as_dict, changed_keys, keys_with_role, restricted

# 2: the state is TrainingState's (training.py); the key names the device and the torch version.
# 3: `finished` says whether training ended with the saved epoch (its last, or an early stop).
FORMAT_VERSION = 3
SNAPSHOTS_ENV = "FMNIST_SNAPSHOTS"
DEFAULT_FOLDER = Path(".dvc") / "tmp" / "snapshots"
STALE_AFTER_DAYS = 7  # a dead run's snapshot unused this long is cleared by the stage's next run


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


def device_name(device: torch.device) -> str:
    """The device as it bears on the numbers: `cpu`, or `cuda` and the GPU's name (kernels differ by GPU)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


@dataclass(frozen=True)
class RunKey:
    """What determines a training run's numbers; a snapshot resumes only a run with the same key."""

    stage: str
    params: dict[str, Any]  # the block's keys that change the numbers (config.RECIPE, PER_RUN), flat, as validated
    seed: int
    device: str  # resolved (device_name): a CUDA run's random state and kernels are not the CPU's
    workers: int  # resolved: each worker's share and dropout stream depend on the count
    torch: str  # torch.__version__: kernels change between releases
    data: dict[str, str] = field(default_factory=dict)  # input file (prepared split, teacher) -> SHA-256
    code: dict[str, str] = field(default_factory=dict)  # code file -> SHA-256

    @classmethod
    def of(cls, stage: str, cfg: TrainConfig, seed: int, device: torch.device, workers: int,
           data_files: Iterable[Path], code_files: Iterable[str]) -> RunKey:
        return cls(stage=stage, params=restricted(as_dict(cfg), keys_with_role(TrainConfig, RECIPE, PER_RUN)),
                   seed=seed, device=device_name(device), workers=workers, torch=str(torch.__version__),
                   data={Path(p).name: file_sha256(Path(p)) for p in data_files},
                   code={str(p): file_sha256(Path(p)) for p in code_files if Path(p).is_file()})

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def differences(self, other: dict[str, Any]) -> list[str]:
        """What differs between this run and the one `other` (a stored key) describes, in words."""
        found = [f"{self.stage}.{change}" for change in changed_keys(other.get("params", {}), self.params)]
        found += [f"{name} {other.get(name)!r} -> {getattr(self, name)!r}" for name in ("seed", "device", "workers",
                                                                                        "torch")
                  if other.get(name) != getattr(self, name)]
        found += [f"input ({name}) changed" for name, h in self.data.items() if other.get("data", {}).get(name) != h]
        found += [f"code ({path}) changed" for path, h in self.code.items() if other.get("code", {}).get(path) != h]
        return found or ["its run key differs"]


def _lock(path: Path, wait: bool, create: bool = True) -> int | None:
    """An exclusive lock on `path`, as an open descriptor (closing it releases the lock), or None when another
    process holds it (without `wait`). Without `create`, FileNotFoundError when the file is gone; with it, the
    file and its folder are made as needed: another run's `remove` deletes the folder when it leaves it empty,
    even between our look and our open."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if not create:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        # The holder before us may have removed the file after we opened it: a lock on that orphan guards
        # nothing, so lock the file that the path names now (or, without `create`, find it gone).
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


class Snapshots:
    """The snapshot of one training run: held while the run lives, loaded to resume, saved after each epoch,
    removed when the run is done."""

    def __init__(self, key: RunKey, folder: Path, log: Callable[[str], None] = print):
        self.key = key
        self.folder = folder
        self.path = folder / f"{key.stage}-{key.digest[:16]}.pt"
        self.log = log
        self._cleared = False

    @staticmethod
    def lock_of(snapshot: Path) -> Path:
        return snapshot.with_suffix(".lock")

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold this run's lock for the block: the process that lives as long as the run (the stage, which
        launches the workers) holds it, so no other run clears this snapshot while this run could still write
        or need it. A second run with the very same key waits here until the first ends, then resumes what it
        left or starts afresh."""
        lock = self.lock_of(self.path)
        fd = _lock(lock, wait=False)
        if fd is None:
            self.log(f"{self.key.stage}: another run with the same params is training with {self.path}; "
                     "waiting for it to end")
            fd = _lock(lock, wait=True)
        try:
            yield
        finally:
            os.close(fd)

    def load(self) -> dict[str, Any] | None:
        """The saved training state of this very run, or None (saying why when another run's is there)."""
        if not self.path.exists():
            self._explain_others()
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
            if blob.get("format_version") != FORMAT_VERSION or blob.get("key") != asdict(self.key):
                raise ValueError("it belongs to another run or format")
            state, finished = blob["state"], bool(blob["finished"])
            saved_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(blob["saved_at"]))
        except Exception as exc:  # truncated, corrupt, foreign: never worth a traceback, the run starts afresh
            aside = self._set_aside()
            self.log(f"{self.key.stage}: warning: ignoring unreadable snapshot {self.path} "
                     f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}); "
                     f"{f'kept as {aside} for inspection; ' if aside else ''}starting afresh")
            return None
        epochs = self.key.params.get("epochs")
        restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        after = (f", restart {restarts} of {os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')} after a worker failed"
                 if restarts not in ("", "0") else "")
        source = f"{self.path} (snapshot of {saved_at}{after})"
        if finished:
            self.log(f"{self.key.stage}: training already ended at epoch {state['epoch']} of {epochs}"
                     f"{' (early stop)' if state['epoch'] < epochs else ''}; writing the outputs from {source}")
        else:
            self.log(f"{self.key.stage}: resuming at epoch {state['epoch'] + 1} of {epochs} from {source}")
        return state

    def _set_aside(self) -> Path | None:
        """Rename an unreadable snapshot out of the way (the next save would overwrite it), for inspection."""
        aside = self.path.with_name(f"{self.path.stem}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}{self.path.suffix}")
        try:
            os.replace(self.path, aside)
            os.utime(aside)  # a rename keeps the old time: kept STALE_AFTER_DAYS from now, not cleared by a save
        except OSError:
            return None
        return aside

    def _explain_others(self) -> None:
        others = []
        for path in self._others():
            try:
                others.append((path.stat().st_mtime, path))
            except FileNotFoundError:  # another run cleared or finished it since the listing
                continue
        if not others:
            return
        newest = max(others)[1]
        try:
            stored = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)["key"]
            why = "; ".join(self.key.differences(stored))
        except Exception as exc:
            why = f"it cannot be read ({type(exc).__name__})"
        self.log(f"{self.key.stage}: not resuming {newest}: {why}; starting afresh")

    def _runs(self) -> dict[Path, list[Path]]:
        """The stage's files in the folder, by the snapshot path they belong to: the snapshot itself, its lock,
        a write of it cut short (`.<snapshot>.*.tmp`), its unreadable versions set aside."""
        run = re.compile(rf"\.?({re.escape(self.key.stage)}-[0-9a-f]{{16}})\.")
        runs: dict[Path, list[Path]] = {}
        for path in self.folder.glob(f"*{self.key.stage}-*"):
            if found := run.match(path.name):
                runs.setdefault(self.folder / f"{found.group(1)}.pt", []).append(path)
        return runs

    def _others(self) -> list[Path]:
        """The other runs' snapshots."""
        return [snapshot for snapshot, files in self._runs().items() if snapshot != self.path and snapshot in files]

    def save(self, state: dict[str, Any], *, finished: bool) -> None:
        """Atomically: a kill during the write leaves the previous snapshot. `finished`: training ended with this
        epoch (its last, or an early stop), so a rerun only writes the outputs. The first save also clears the
        files of the stage's other runs that no live run holds and that were left unused for STALE_AFTER_DAYS."""
        write_torch(self.path, {"format_version": FORMAT_VERSION, "key": asdict(self.key), "saved_at": time.time(),
                                "finished": finished, "state": state})
        if not self._cleared:
            self._clear_stale_others()
            self._cleared = True

    def _clear_stale_others(self) -> None:
        cutoff = time.time() - STALE_AFTER_DAYS * 86400
        for snapshot, files in self._runs().items():
            if snapshot == self.path:
                continue
            try:
                if max(path.stat().st_mtime for path in files) > cutoff:
                    continue  # recent: a killed run's rerun may still resume it, or someone inspect it
            except FileNotFoundError:  # another run cleared, wrote or finished it since the listing
                continue
            lock = self.lock_of(snapshot)
            try:
                fd = _lock(lock, wait=False, create=False)
            except FileNotFoundError:
                fd = None  # no lock file: no run holds it
            else:
                if fd is None:
                    continue  # a live run holds it, however old its files
            try:
                for path in files:
                    if path != lock:
                        path.unlink(missing_ok=True)
                lock.unlink(missing_ok=True)  # last, while locked: a run that opened it meanwhile makes a new one
            finally:
                if fd is not None:
                    os.close(fd)

    def _saved(self) -> tuple[int, bool] | None:
        """The last finished epoch on disk and whether training ended with it; None when there is none."""
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            return int(blob["state"]["epoch"]), bool(blob["finished"])
        except Exception:
            return None

    def saved_epoch(self) -> int | None:
        """The last finished epoch on disk (None when there is none)."""
        saved = self._saved()
        return saved[0] if saved is not None else None

    def describe_saved(self) -> str:
        """What an interrupted or failed run leaves to resume, in words, for its last line."""
        saved = self._saved()
        if saved is None:
            return "no epoch had finished, so nothing is kept to resume"
        epoch, finished = saved
        if not finished:
            return f"epochs 1-{epoch} are saved in {self.path}: `dvc repro` resumes at epoch {epoch + 1}"
        ended = ("all epochs are" if epoch == self.key.params.get("epochs") else
                 f"epochs 1-{epoch}, where training stopped early, are")
        return f"{ended} saved in {self.path}: `dvc repro` writes the outputs from it"

    def remove(self) -> None:
        """The run is done (every worker finished, the outputs are written): nothing is left to resume. Called
        while the lock is held, so a run waiting for the same key locks the new lock file it then creates."""
        self.path.unlink(missing_ok=True)
        self.lock_of(self.path).unlink(missing_ok=True)
        for leftover in self.folder.glob(f".{self.path.name}.*.tmp"):  # a write cut short by a kill
            leftover.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # other runs' snapshots are still there
