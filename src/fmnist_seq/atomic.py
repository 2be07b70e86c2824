"""Atomic, durable writes: a reader sees either the old file (or folder) or the complete new one, never a partial
one, and after a crash or power cut one complete version is on disk.

A rename is atomic but not durable by itself: the new file's bytes must reach the disk before the rename (or a
crash can leave the new name pointing at an empty file), and the folder that holds the name must be synced
after it (or the rename itself can be lost).
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically (renameat2, Linux 3.15+)
_AT_FDCWD = -100


def _create_beside(dest: Path, create: Callable[[Path], None]) -> Path:
    """A new temporary path beside `dest`, `.<name>.<random>.tmp`, made by `create` (which fails if it exists).

    Unlike tempfile's (0600, 0700), the file or folder is created with the usual mode, 0666 or 0777 less the
    umask, which the kernel applies: reading the umask to chmod afterwards means setting it, process-wide, and
    a file another thread creates meanwhile would get mode 0666.
    """
    while True:
        path = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            create(path)
        except FileExistsError:
            continue
        return path


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder's: its names) to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_beside(dest, lambda path: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, dest)
        fsync_path(dest.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot (then the caller renames)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc before 2.28
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `dest`; it replaces `dest` only if the block succeeds.

    The old folder is swapped out in one step (or, where that is impossible, renamed aside first) and deleted
    only once the new one is in place, so a crash at any moment leaves one complete version under a known name.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = _create_beside(dest, lambda path: path.mkdir(0o777))
    old = staging  # after a swap, the staging name holds the old folder
    try:
        yield staging
        _fsync_tree(staging)
        if not dest.exists():
            os.replace(staging, dest)
        elif not _exchange(staging, dest):
            old = staging.with_name(staging.name + ".old")
            os.replace(dest, old)
            os.replace(staging, dest)
        fsync_path(dest.parent)
    finally:
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_torch(dest: str | Path, obj: Any) -> None:
    """torch.save `obj` to `dest`, with the same bytes every time for the same tensors.

    torch.save names the zip archive's folder after the file it writes to, and the atomic write's temporary
    name is random; saving through memory keeps the name out, so DVC sees identical outputs on a rerun.
    """
    import torch  # here, so that the stages that never touch tensors do not pay for importing torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(dest, buffer.getvalue())


def write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: str | Path, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")
