import gzip
import hashlib

import pytest

from conftest import idx_bytes, make_dataset, serve
from fmnist_seq.atomic import atomic_dir, atomic_path
from fmnist_seq.data import RAW_FILES
from fmnist_seq.config import DownloadConfig, FileSpec
from fmnist_seq.download import SourceError, check_idx, fetch_all, fetch_from_source
from fmnist_seq.errors import DataError
import numpy as np

LABELS = np.arange(10, dtype=np.uint8)
RAW = idx_bytes(LABELS)
SPEC = FileSpec(sha256=hashlib.sha256(RAW).hexdigest(), count=10)


def test_check_idx_accepts_the_right_file():
    check_idx(RAW, SPEC, "labels")


def test_wrong_hash_is_rejected():
    altered = RAW[:-1] + bytes([RAW[-1] ^ 1])
    with pytest.raises(SourceError, match="SHA-256 of the decompressed bytes"):
        check_idx(altered, SPEC, "labels")


def test_bad_idx_header_is_rejected():
    with pytest.raises(SourceError, match="bad IDX magic number"):
        check_idx(b"\x00\x00\x09\x01" + RAW[4:], SPEC, "labels")
    with pytest.raises(SourceError, match="too short"):
        check_idx(b"\x00\x00", SPEC, "labels")


def test_wrong_item_count_is_rejected():
    with pytest.raises(SourceError, match="header says 10 items, expected 11"):
        check_idx(RAW, FileSpec(SPEC.sha256, 11), "labels")
    images = idx_bytes(np.zeros((2, 28, 28)))
    with pytest.raises(SourceError, match="bytes, the header implies"):
        check_idx(images[:-5], FileSpec(SPEC.sha256, 2), "images")


def _cfg(sources, files):
    return DownloadConfig(sources=sources, files={n: FileSpec(**s) for n, s in files.items()}, timeout_s=2, retries=0)


def test_truncated_gzip_is_rejected_and_next_source_used(tmp_path, synthetic_dir):
    good, files = synthetic_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    name = RAW_FILES["train_labels"]
    blob = (good / f"{name}.gz").read_bytes()
    (bad / f"{name}.gz").write_bytes(blob[: len(blob) // 2])
    cfg = _cfg([str(bad), good.as_uri()], files)
    with pytest.raises(SourceError, match="not a complete gzip file"):
        fetch_from_source(str(bad), name, cfg)
    report = fetch_all(cfg, tmp_path / "raw")
    assert report.used[name] == good.as_uri()
    assert "not a complete gzip file" in report.rejected[name][0]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(RAW_FILES.values())


def test_folder_may_hold_decompressed_files(tmp_path, synthetic_dir):
    good, files = synthetic_dir
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in RAW_FILES.values():
        (plain / name).write_bytes(gzip.decompress((good / f"{name}.gz").read_bytes()))
    fetch_all(_cfg([str(plain)], files), tmp_path / "raw")
    assert (tmp_path / "raw" / RAW_FILES["test_images"]).stat().st_size == 16 + 100 * 784


def test_http_source_and_error_lists_every_source(tmp_path, http_mirror):
    url, folder, files = http_mirror
    fetch_all(_cfg([url], files), tmp_path / "raw")
    assert len(list((tmp_path / "raw").iterdir())) == 4
    files = {**files, RAW_FILES["test_labels"]: {**files[RAW_FILES["test_labels"]], "sha256": "0" * 64}}
    out = tmp_path / "raw2"
    with pytest.raises(DataError) as err:
        fetch_all(_cfg([str(tmp_path / "nowhere"), url, "http://127.0.0.1:9/"], files), out)
    message = str(err.value)
    assert "could not get a valid t10k-labels-idx1-ubyte" in message
    assert "no t10k-labels-idx1-ubyte.gz" in message and "SHA-256" in message and "127.0.0.1:9" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not out.exists(), "a failed download must leave no output folder"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw2")], "staging folder left behind"


def test_http_404_and_unsupported_scheme(http_mirror):
    url, _, files = http_mirror
    cfg = _cfg([url], files)
    with pytest.raises(SourceError, match="HTTP 404"):
        fetch_from_source(url + "/missing", RAW_FILES["test_labels"], cfg)
    with pytest.raises(SourceError, match="unsupported scheme 'ftp'"):
        fetch_from_source("ftp://example.com/x", RAW_FILES["test_labels"], cfg)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("x")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "new").write_text("y")
            raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["old"]
    with atomic_dir(target) as staging:
        (staging / "new").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert len(list(tmp_path.iterdir())) == 1


# --- hostile or broken sources: bounded memory, a clear reason, nothing left behind --------------------------

def _bomb(path, inflated_mb: int) -> None:
    """A .gz that starts like the labels file and inflates to `inflated_mb` MB of zeros from ~1 KB per MB:
    gzip members of one compressed megabyte, repeated (gzip readers join members, as for the real files)."""
    member = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    with path.open("wb") as f:
        f.write(gzip.compress(RAW[:8]))
        for _ in range(inflated_mb):
            f.write(member)


def test_gzip_bomb_stops_at_the_files_size_in_bounded_memory(tmp_path):
    import tracemalloc

    folder = tmp_path / "hostile"
    folder.mkdir()
    name = RAW_FILES["train_labels"]
    _bomb(folder / f"{name}.gz", inflated_mb=256)
    assert (folder / f"{name}.gz").stat().st_size < 1 << 20
    cfg = _cfg([str(folder)], {name: {"sha256": SPEC.sha256, "count": 10}})
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match=r"decompresses to more than 18 bytes, the size of train-labels-idx1"
                                              r"-ubyte with 10 items.*gzip bomb"):
            fetch_from_source(str(folder), name, cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB held while reading a bomb"


def test_gzip_bomb_from_a_mirror_fails_cleanly_and_leaves_nothing(tmp_path, synthetic_dir):
    good, files = synthetic_dir
    name = RAW_FILES["test_labels"]
    _bomb(good / f"{name}.gz", inflated_mb=64)
    out = tmp_path / "raw"
    with serve(good) as url, pytest.raises(DataError) as err:
        fetch_all(_cfg([url], files), out)
    assert f"{url}/{name}.gz: decompresses to more than {8 + files[name]['count']:,} bytes" in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".raw")]


def test_endless_compressed_stream_and_oversized_plain_file_are_refused(tmp_path):
    folder = tmp_path / "endless"
    folder.mkdir()
    name = RAW_FILES["train_labels"]
    empty_member = gzip.compress(b"")
    (folder / f"{name}.gz").write_bytes(gzip.compress(RAW[:8]) + empty_member * 5000)  # inflates to nothing more
    cfg = _cfg([str(folder)], {name: {"sha256": SPEC.sha256, "count": 10}})
    with pytest.raises(SourceError, match=r"more than [\d,]+ compressed bytes"):
        fetch_from_source(str(folder), name, cfg)
    (folder / f"{name}.gz").unlink()
    (folder / name).write_bytes(RAW + b"\0" * 10_000)
    with pytest.raises(SourceError, match=r"larger than 7,856 bytes"):
        fetch_from_source(str(folder), name, cfg)


def test_bad_urls_and_unreadable_files_are_source_errors(tmp_path, http_mirror, monkeypatch):
    url, _, files = http_mirror
    name = RAW_FILES["test_labels"]
    cfg = _cfg([url], files)
    for source in ("http://[::1", "http://127.0.0.1:port/"):
        with pytest.raises(SourceError, match="not a valid URL"):
            fetch_from_source(source, name, cfg)
    good = tmp_path / "good"
    make_dataset(good)
    real_open = type(good).open

    def refuse(path, *args, **kwargs):  # as a file root may not read (root reads any mode bits)
        if path.name == f"{name}.gz":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(type(good), "open", refuse)
    with pytest.raises(SourceError, match=f"{good}: cannot read {name}: .*Permission denied"):
        fetch_from_source(str(good), name, cfg)
