"""Fetch the four Fashion-MNIST IDX files from an ordered list of sources and verify them.

A source is a folder, a file:// URL or an http(s):// URL holding `<name>.gz` (folders may also hold the
decompressed `<name>`). Each file is checked by the SHA-256 of its *decompressed* bytes, because the
.gz bytes differ between mirrors (Debian recompressed them), and by its IDX header and item count. A file is
decompressed as it arrives and never past the exact size its item count allows, so a gzip bomb or an endless
response from a broken or hostile mirror (the list has a plain-http one) stops there, in bounded memory.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

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


def max_size(spec: FileSpec, magic: int | None = None) -> int:
    """The exact size of the decompressed IDX file of `spec.count` items with this magic number (labels: an
    8-byte header and 1 byte each; images: 16 bytes and 28x28 each), the larger one while it is unknown."""
    if magic == _IDX_LABELS:
        return 8 + spec.count
    return 16 + spec.count * IMAGE_SIZE * IMAGE_SIZE


class _ReadFailed(Exception):
    """Reading the compressed stream failed (a network or disk error, not a bad file): may be retried."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _CountedReader(io.RawIOBase):
    """A file-like view of `stream` that counts the bytes read and refuses to read past `limit` of them."""

    def __init__(self, stream: BinaryIO, limit: int, label: str, on_read: Callable[[int], object]) -> None:
        self.stream, self.limit, self.label, self.on_read, self.count = stream, limit, label, on_read, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            chunk = self.stream.read(min(len(buffer), self.limit + 1 - self.count))
        except (OSError, http.client.HTTPException) as exc:
            raise _ReadFailed(exc) from None
        self.count += len(chunk)
        if self.count > self.limit:
            raise SourceError(f"{self.label}: more than {self.limit:,} compressed bytes, more than the file can "
                              "take: not this file, or a broken or hostile source")
        self.on_read(len(chunk))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def gunzip_capped(stream: BinaryIO, name: str, spec: FileSpec, label: str,
                  on_read: Callable[[int], object] = lambda n: None) -> bytes:
    """Decompress the gzip `stream` of file `name`, never holding more than the file's exact size (+1 byte).

    A gzip bomb (a few KB that inflate to gigabytes) or an endless stream stops with SourceError as soon as it
    passes the size that the IDX header and `spec.count` allow, so memory stays bounded by the real file.
    """
    cap = max_size(spec)
    # deflate's stored blocks add 5 bytes per 64 KiB: any honest .gz of the file is far below this
    compressed = _CountedReader(stream, cap + cap // 100 + (1 << 16), label, on_read)
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BufferedReader(compressed, 1 << 16), mode="rb") as gz:
            while block := gz.read(min(1 << 20, cap + 1 - len(out))):
                out += block
                if len(out) >= 4:  # the magic number says labels or images: the exact size from here on
                    cap = max_size(spec, struct.unpack(">I", bytes(out[:4]))[0])
                if len(out) > cap:
                    raise SourceError(f"{label}: decompresses to more than {cap:,} bytes, the size of {name} with "
                                      f"{spec.count:,} items: not this file, or a broken or hostile source "
                                      "(a gzip bomb); stopped there")
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{name}.gz is not a complete gzip file ({exc})") from None
    return bytes(out)


def _content_length(response: Any) -> int | None:
    try:
        return int(response.headers.get("Content-Length") or 0) or None
    except ValueError:  # a server's odd header only costs the progress bar its total
        return None


def _fetch_url(url: str, name: str, cfg: DownloadConfig) -> bytes:
    """GET `url` and gunzip it as it arrives, retrying transient failures (timeouts, resets, 5xx) with a
    short backoff; a bad file is not retried."""
    for attempt in range(cfg.retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=cfg.timeout_s) as response:
                with tqdm(total=_content_length(response), unit="B", unit_scale=True, desc=name, leave=False,
                          disable=not sys.stderr.isatty()) as bar:
                    return gunzip_capped(response, name, cfg.files[name], url, bar.update)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == cfg.retries:
                raise SourceError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (ValueError, http.client.InvalidURL) as exc:  # a bad port or IPv6 literal
            raise SourceError(f"{url}: not a valid URL ({exc})") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, _ReadFailed) as exc:
            if attempt == cfg.retries:
                error = exc.error if isinstance(exc, _ReadFailed) else exc
                reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
                raise SourceError(f"{url}: {reason} (after {cfg.retries + 1} attempts)") from None
        time.sleep(min(2.0 ** attempt, 10.0))
    raise AssertionError("unreachable")


def _read_local(folder: Path, name: str, spec: FileSpec) -> bytes:
    """`<name>.gz` (gunzipped, capped) or `<name>` (read up to its largest possible size) from a folder."""
    gz, plain = folder / f"{name}.gz", folder / name
    try:
        if gz.is_file():
            with gz.open("rb") as f:
                return gunzip_capped(f, name, spec, str(gz))
        if plain.is_file():
            with plain.open("rb") as f:
                data = f.read(max_size(spec) + 1)
            if len(data) > max_size(spec):
                raise SourceError(f"{plain}: larger than {max_size(spec):,} bytes, the most {name} with "
                                  f"{spec.count:,} items can be")
            return data
    except (OSError, _ReadFailed) as exc:
        raise SourceError(f"{folder}: cannot read {name}: {getattr(exc, 'error', exc)}") from None
    raise SourceError(f"{folder}: no {name}.gz or {name} there")


def fetch_from_source(source: str, name: str, cfg: DownloadConfig) -> bytes:
    """The verified, decompressed bytes of file `name` from one source, or SourceError."""
    spec = cfg.files[name]
    try:
        parsed = urllib.parse.urlparse(source)
    except ValueError as exc:  # e.g. an unclosed IPv6 literal
        raise SourceError(f"{source}: not a valid URL ({exc})") from None
    if parsed.scheme in ("http", "https"):
        data = _fetch_url(source.rstrip("/") + f"/{name}.gz", name, cfg)
    elif parsed.scheme in ("", "file"):
        data = _read_local(Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else source),
                           name, spec)
    else:
        raise SourceError(f"{source}: unsupported scheme {parsed.scheme!r} (use a folder, file:// or http(s)://)")
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
