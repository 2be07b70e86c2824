"""Fetch the four Fashion-MNIST IDX files from an ordered list of sources and verify them.

A source is a folder, a file:// URL or an http(s):// URL holding `<name>.gz` (folders may also hold the
decompressed `<name>`). Each file is checked by the SHA-256 of its *decompressed* bytes, because the
.gz bytes differ between mirrors (Debian recompressed them), and by its IDX header and item count.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fmnist_seq.atomic import atomic_dir
from fmnist_seq.classes import IMAGE_SIZE
from fmnist_seq.config import DownloadConfig, FileSpec
from fmnist_seq.errors import DataError

# IDX magic numbers: unsigned-byte data with 1 (labels) or 3 (images) dimensions.
_IDX_LABELS, _IDX_IMAGES = 0x0801, 0x0803

HOW_TO_GET_DATA = (
    "To get the data: on Debian/Ubuntu run `sudo apt-get install dataset-fashion-mnist` "
    "(files land in /usr/share/datasets/fashion-mnist), or make one of the http mirrors reachable, "
    "or put the four .gz files in a folder and list it first in params.yaml download.sources."
)


class SourceError(Exception):
    """One source could not provide a valid file; the message says why."""


@dataclass
class FetchReport:
    """Where each file came from, and why the sources before it were rejected."""

    used: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, list[str]] = field(default_factory=dict)


def check_idx(data: bytes, spec: FileSpec, name: str) -> None:
    """Raise SourceError unless `data` is the decompressed IDX file described by `spec`."""
    if len(data) < 8:
        raise SourceError(f"{name}: {len(data)} bytes is too short for an IDX header")
    magic, count = struct.unpack(">II", data[:8])
    if magic == _IDX_IMAGES:
        if len(data) < 16:
            raise SourceError(f"{name}: truncated IDX image header")
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
            raise SourceError(f"{name}: images are {rows}x{cols}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
        expected_len = 16 + count * rows * cols
    elif magic == _IDX_LABELS:
        expected_len = 8 + count
    else:
        raise SourceError(f"{name}: bad IDX magic number 0x{magic:08x} (not an IDX ubyte file)")
    if count != spec.count:
        raise SourceError(f"{name}: header says {count} items, expected {spec.count}")
    if len(data) != expected_len:
        raise SourceError(f"{name}: {len(data)} bytes, the header implies {expected_len}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise SourceError(f"{name}: SHA-256 of the decompressed bytes is {digest}, expected {spec.sha256}")


def decompress(raw: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{name}.gz is not a complete gzip file ({exc})") from None


def _read_url(url: str, timeout_s: float, retries: int, label: str) -> bytes:
    """GET `url`, retrying transient failures (timeouts, resets, 5xx) with a short backoff."""
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                chunks = []
                with tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False,
                          disable=not sys.stderr.isatty()) as bar:
                    while chunk := response.read(1 << 16):
                        chunks.append(chunk)
                        bar.update(len(chunk))
                return b"".join(chunks)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == retries:
                raise SourceError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            if attempt == retries:
                reason = getattr(exc, "reason", exc)
                raise SourceError(f"{url}: {reason} (after {retries + 1} attempts)") from None
        time.sleep(min(2.0 ** attempt, 10.0))
    raise AssertionError("unreachable")


def fetch_from_source(source: str, name: str, cfg: DownloadConfig) -> bytes:
    """The verified, decompressed bytes of file `name` from one source, or SourceError."""
    spec = cfg.files[name]
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        url = source.rstrip("/") + f"/{name}.gz"
        data = decompress(_read_url(url, cfg.timeout_s, cfg.retries, name), name)
    else:
        folder = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else source)
        if parsed.scheme not in ("", "file"):
            raise SourceError(f"{source}: unsupported scheme {parsed.scheme!r} (use a folder, file:// or http(s)://)")
        if (folder / f"{name}.gz").is_file():
            data = decompress((folder / f"{name}.gz").read_bytes(), name)
        elif (folder / name).is_file():
            data = (folder / name).read_bytes()
        else:
            raise SourceError(f"{folder}: no {name}.gz or {name} there")
    check_idx(data, spec, name)
    return data


def fetch_all(cfg: DownloadConfig, out_dir: str | Path) -> FetchReport:
    """Write every file of `cfg.files`, verified and decompressed, into `out_dir`, all or nothing.

    Files are gathered in a staging folder that replaces `out_dir` only once all of them passed,
    so a failed or interrupted run leaves nothing a later run could take for good data.
    """
    report = FetchReport()
    with atomic_dir(out_dir) as staging:
        for name in cfg.files:
            errors = report.rejected.setdefault(name, [])
            for source in cfg.sources:
                try:
                    data = fetch_from_source(source, name, cfg)
                except SourceError as exc:
                    errors.append(f"{source}: {exc}" if not str(exc).startswith(source) else str(exc))
                    continue
                (staging / name).write_bytes(data)
                report.used[name] = source
                break
            else:
                tried = "\n".join(f"  - {e}" for e in errors)
                raise DataError(f"could not get a valid {name} from any source. Tried:\n{tried}\n"
                                + HOW_TO_GET_DATA)
    return report
