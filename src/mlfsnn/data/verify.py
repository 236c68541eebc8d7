"""Is a downloaded file the file: the first bytes of an answer, checksums, and an archive's own
integrity where no checksum is published; a file that fails is kept aside, never used.

An answer that is an HTML page (figshare's bot challenge: by ``Content-Type`` and by its first bytes),
empty, or without the archive's magic bytes is refused before a byte of it is written. A file
without a published checksum is read whole by its own format's checks (every zip member
against its CRC-32; a gzip stream to its trailer, whose CRC and length cover every byte, and a tar
inside it header by header), then its sha256 is written beside it as ``<name>.sha256``
(``sha256sum -c`` reads it): from then on a changed or truncated copy is caught like a checksum
mismatch.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

from ..files import atomic_write_text
from .sources import RemoteFile

__all__ = [
    "archive_problem",
    "corrupt_name",
    "digests",
    "file_problem",
    "not_the_file",
    "record_sha256",
    "recorded_sha256",
    "sha256_record",
    "verify_existing",
]

_CHUNK = 1 << 20
_MAGIC = {"zip": b"PK\x03\x04", "tar.gz": b"\x1f\x8b", "gz": b"\x1f\x8b"}


def digests(path: Path) -> tuple[str, str]:
    """(md5, sha256) of ``path``, in one pass."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def sha256_record(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def record_sha256(dest: Path, sha: str) -> None:
    """Write ``<name>.sha256`` beside ``dest`` in ``sha256sum``'s format."""
    atomic_write_text(sha256_record(dest), f"{sha}  {dest.name}\n")


def recorded_sha256(dest: Path) -> str | None:
    """The sha256 recorded at the first download of ``dest``, or None."""
    record = sha256_record(dest)
    try:
        text = record.read_text(errors="replace") if record.is_file() else ""
    except OSError:
        return None
    value = text.split()[0].lower() if text.split() else ""
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every member, checks its CRC-32
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        return f"not an intact zip archive ({exc})"
    return f"zip member {bad} fails its CRC check" if bad else None


def _gzip_problem(path: Path, tar: bool) -> str | None:
    try:
        with gzip.open(path, "rb") as gz:
            if tar:
                with tarfile.open(fileobj=gz, mode="r|") as tf:
                    for member in tf:
                        data = tf.extractfile(member) if member.isfile() else None
                        while data is not None and data.read(_CHUNK):
                            pass
            while gz.read(_CHUNK):  # on to the trailer: its CRC-32 and length cover every byte
                pass
    except (gzip.BadGzipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        return f"not an intact {'tar.gz' if tar else 'gzip'} archive ({exc or type(exc).__name__})"
    return None


def archive_problem(path: Path, kind: str) -> str | None:
    """Why ``path`` is not an intact archive of ``kind`` (``zip``, ``tar.gz``, ``gz``), or None;
    other kinds have no check of their own."""
    if path.stat().st_size == 0:
        return "an empty file (0 bytes)"
    if kind == "zip":
        return _zip_problem(path)
    if kind in ("tar.gz", "gz"):
        return _gzip_problem(path, kind == "tar.gz")
    return None


def not_the_file(first: bytes, content_type: str, kind: str, fresh: bool) -> str | None:
    """Why the answer whose body starts with ``first`` is not the file; ``fresh``: it starts at
    byte 0 (a resumed part's bytes come from the middle, only the content type says something)."""
    head = first[:512].lstrip().lower()
    if "html" in content_type.lower() or (fresh and head.startswith((b"<!doctype html", b"<html"))):
        return (
            f"an HTML page instead of the {kind or 'file'} (Content-Type {content_type or 'none'}, starting "
            f"{first[:30]!r}): a bot-challenge or login page (figshare answers scripts so on its "
            "ndownloader links)"
        )
    if not fresh:
        return None
    if not first:
        return "an empty answer (0 bytes)"
    magic = _MAGIC.get(kind)
    if magic and len(first) >= len(magic) and not first.startswith(magic):
        return f"not a {kind} file (it starts {first[:16]!r})"
    return None


def corrupt_name(path: Path, name: str) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<time>`` beside it (never over another); returns it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{name}.corrupt-{stamp}"), 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = path.with_name(f"{name}.corrupt-{stamp}-{n}")
    os.rename(path, aside)
    return aside


def file_problem(path: Path, file: RemoteFile, dest: Path) -> tuple[str | None, str]:
    """(why ``path`` is not ``file``, or None; its sha256). Without a published md5, the sha256
    recorded at the first download vouches for it, else the archive's own checks."""
    size = path.stat().st_size
    if file.size is not None and size != file.size:
        return f"{size} bytes, not the published {file.size}", ""
    md5, sha = digests(path)
    if file.md5 is not None:
        return (None if md5 == file.md5 else f"md5 {md5} is not the published {file.md5}"), sha
    recorded = recorded_sha256(dest)
    if recorded is not None:
        if recorded == sha:
            return None, sha
        return (
            f"sha256 {sha} is not the {recorded} recorded at the first download ({dest.name}.sha256; "
            "delete that file to accept the new one)"
        ), sha
    return archive_problem(path, file.kind), sha


def verify_existing(file: RemoteFile, dest: Path) -> str | None:
    """Why the file already at ``dest`` is not ``file`` (None: it is); a first look at a file
    without a published checksum records its sha256."""
    problem, sha = file_problem(dest, file, dest)
    if problem is None and file.md5 is None and recorded_sha256(dest) is None:
        record_sha256(dest, sha)
    return problem
