"""Atomic writes are durable too: the bytes reach the disk before the rename and the rename before the write
returns, and a replaced folder is swapped out, never deleted before the new one is in place."""

import os
from pathlib import Path

import pytest

from fmnist_seq import atomic
from fmnist_seq.atomic import atomic_dir, write_bytes


def record_syncs(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync and rename the atomic module makes, in order, as (what, path)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        real_replace(src, dst)
        events.append(("rename", str(dst)))
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fd paths from /proc")
def test_a_file_is_synced_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    events = record_syncs(monkeypatch)
    dest = tmp_path / "out" / "model.pt"
    write_bytes(dest, b"weights")
    assert dest.read_bytes() == b"weights"
    (synced_file, temporary), rename, synced_folder = events
    assert synced_file == "fsync" and Path(temporary).parent == dest.parent and temporary != str(dest)
    assert rename == ("rename", str(dest))
    assert synced_folder == ("fsync", str(dest.parent))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2 exchange", "rename aside"])
def test_a_replaced_folder_always_exists_complete(tmp_path, monkeypatch, exchange):
    """Whatever a crash interrupts, one complete version is on disk: the old folder goes only once the new
    one holds the name (checked at every deletion the replacement makes)."""
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "file").write_text("old")
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    seen_at_deletion: list[str] = []
    real_rmtree = atomic.shutil.rmtree

    def rmtree(path, ignore_errors=False) -> None:
        if Path(path).exists():
            seen_at_deletion.append((dest / "file").read_text())
        real_rmtree(path, ignore_errors=ignore_errors)
    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    with atomic_dir(dest) as staging:
        (staging / "file").write_text("new")
    assert (dest / "file").read_text() == "new"
    assert seen_at_deletion == ["new"]  # the old folder was deleted once, after the new one was in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no staging or old folder left


def test_a_failed_block_leaves_the_old_folder(tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "file").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(dest) as staging:
        (staging / "file").write_text("half")
        raise RuntimeError("download failed")
    assert (dest / "file").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_new_files_and_folders_get_the_usual_mode_without_touching_the_umask(tmp_path, monkeypatch):
    """The kernel applies the umask at creation: reading it would mean setting it, process-wide, and a file
    another thread created meanwhile would be world-writable."""
    real_umask = os.umask
    previous = real_umask(0o027)
    changes: list[int] = []
    monkeypatch.setattr(atomic.os, "umask", lambda mask: changes.append(mask) or real_umask(mask))
    try:
        write_bytes(tmp_path / "file", b"data")
        with atomic_dir(tmp_path / "folder") as staging:
            (staging / "file").write_text("data")
    finally:
        real_umask(previous)
    assert changes == []
    assert (tmp_path / "file").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750
