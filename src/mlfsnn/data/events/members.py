"""Reading a recording, a labels file or a trial list, wherever it lies, with a bound on its size.

A release is data from elsewhere: a zip whose member inflates a thousandfold (or whose header lies
about its size), a tar bomb, a link to ``/dev/zero`` or a FIFO in an extracted folder. Every byte the
event datasets read from their inputs comes through here:

* a file must be a regular file and at most the cap; links are followed (data folders assembled from
  links into a shared store are common), the file they lead to is checked;
* a zip or tar member is refused when its declared size is above the cap, before any of it is
  inflated, and is read to at most that size + 1 byte, so one holding more than it declares stops too;
* zip members Python cannot read (encrypted, Deflate64 ...) and repeated names are refused when the
  archive is listed, before any work.

The cap (:data:`MAX_RECORDING_BYTES`, 512 MiB) is well above any real recording: the IBM DVS-Gesture
recordings are tens of MB (a 61 MB one holds 7.5 M events), CIFAR10-DVS's a few MB. Parsing holds
about 7 bytes per byte of recording, so the cap keeps one recording under ~4 GB of memory. The
environment variable ``MLFSNN_MAX_RECORDING_BYTES`` changes it (worker processes inherit it).
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from ...errors import ConfigError
from .aedat import CorruptFileError

__all__ = [
    "ENV_MAX_BYTES",
    "MAX_RECORDING_BYTES",
    "MAX_TEXT_BYTES",
    "ZIP_READ_ERRORS",
    "check_zip_members",
    "decode_list",
    "max_recording_bytes",
    "read_file",
    "read_limited",
    "read_zip_member",
    "repeated",
    "text_cap",
]

MAX_RECORDING_BYTES = 512 << 20
# labels files and trial lists of the release are a few kB; their parsers hold every line
MAX_TEXT_BYTES = 16 << 20
ENV_MAX_BYTES = "MLFSNN_MAX_RECORDING_BYTES"
try:
    from lzma import LZMAError
except ImportError:  # a Python built without lzma: zipfile then refuses lzma members itself
    LZMAError = zlib.error  # type: ignore[misc,assignment]
# what zipfile raises on a damaged member (a broken deflate or lzma stream is not an OSError; bzip2
# raises OSError or ValueError) or on one it cannot decode (NotImplementedError, RuntimeError)
ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    KeyError,
    EOFError,
    zlib.error,
    LZMAError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)
_ENCRYPTED = 0x1
_READABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_DEFLATE64 = 9
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK


def max_recording_bytes() -> int:
    """The most bytes one recording may hold: :data:`MAX_RECORDING_BYTES` unless the environment says."""
    raw = os.environ.get(ENV_MAX_BYTES, "").strip()
    if not raw:
        return MAX_RECORDING_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{ENV_MAX_BYTES}={raw!r} is invalid: expected a number of bytes >= 1")
    return value


def text_cap() -> int:
    return min(MAX_TEXT_BYTES, max_recording_bytes())


def _too_large(name: str, size: int, cap: int) -> CorruptFileError:
    return CorruptFileError(
        name,
        f"holds {size} bytes, more than the {cap} bytes one recording of the release may hold "
        f"(a damaged or crafted file; {ENV_MAX_BYTES} raises the limit)",
    )


def read_limited(fh: BinaryIO, declared: int, cap: int, name: str) -> bytes:
    """The ``declared`` bytes of ``fh``; more than declared (a lying header, a growing file) is refused
    after reading one byte past it, so nothing is read without end."""
    if declared > cap:
        raise _too_large(name, declared, cap)
    data = fh.read(declared + 1)
    if len(data) > declared:
        raise CorruptFileError(name, f"holds more than the {declared} bytes its header or size declares")
    return data


def read_file(path: str | Path, cap: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (at most ``cap``, default the recording cap)."""
    cap = max_recording_bytes() if cap is None else cap
    name = str(path)
    try:
        # O_NONBLOCK: opening a FIFO planted under the name must not wait for a writer
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise CorruptFileError(name, f"cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
            raise CorruptFileError(name, f"is {kind}, not a regular file")
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as fh:
            return read_limited(fh, st.st_size, cap, name)
    except OSError as exc:
        raise CorruptFileError(name, f"cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def repeated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted(n for n, k in Counter(names).items() if k > 1)


def _zip_problem(info: zipfile.ZipInfo) -> str | None:
    if info.flag_bits & _ENCRYPTED:
        return "member is encrypted; extract it with its password and point dataset.root at the folder"
    if info.compress_type == _DEFLATE64:
        return (
            "member uses Deflate64, which Python's zipfile cannot read; re-zip with deflate or extract "
            "it and point dataset.root at the folder"
        )
    if info.compress_type not in _READABLE:
        method = zipfile.compressor_names.get(info.compress_type, "unknown")
        return (
            f"member uses compression method {info.compress_type} ({method}), which Python's zipfile "
            "cannot read; re-zip with deflate or extract it and point dataset.root at the folder"
        )
    return None


def check_zip_members(archive: Path, infos: list[zipfile.ZipInfo], key: str = "name") -> None:
    """Refuse repeated names and members zipfile cannot read, naming the archive and the member.

    ``key`` "base" also refuses two members with the same file name in different folders (one
    recording twice: it would be counted twice, or land in train and in test).
    """
    names = [posix_base(i.filename) if key == "base" else i.filename for i in infos]
    twice = repeated(names)
    if twice:
        shown = ", ".join(twice[:3]) + (f" and {len(twice) - 3} more" if len(twice) > 3 else "")
        raise CorruptFileError(
            str(archive),
            f"{len(twice)} recording name(s) occur more than once ({shown}): the same recording "
            "would be counted twice; remove the copies",
        )
    cap = max_recording_bytes()
    for info in infos:
        problem = _zip_problem(info)
        if problem is None and info.file_size > cap:
            raise _too_large(f"{archive}:{info.filename}", info.file_size, cap)
        if problem is not None:
            raise CorruptFileError(f"{archive}:{info.filename}", problem)


def posix_base(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def read_zip_member(archive: zipfile.ZipFile, member: str, name: str) -> bytes:
    """Member ``member`` of the open ``archive``, bounded by its declared size and the cap."""
    cap = max_recording_bytes()
    try:
        info = archive.getinfo(member)
        problem = _zip_problem(info)
        if problem is not None:
            raise CorruptFileError(name, problem)
        with archive.open(info) as fh:
            return read_limited(fh, info.file_size, cap, name)
    except CorruptFileError:  # a DataError, hence a RuntimeError: not "unreadable"
        raise
    except ZIP_READ_ERRORS as exc:
        raise CorruptFileError(name, f"unreadable zip member ({type(exc).__name__}: {exc})") from None


def decode_list(data: bytes, name: str) -> list[str]:
    """The file names of a trial list (``trials_to_train.txt``): ASCII in the release."""
    try:
        return data.decode("utf-8").split()
    except UnicodeDecodeError as exc:
        raise CorruptFileError(
            name,
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); a trial list holds "
            "the recordings' file names: restore it from the release, or delete it (the split then "
            "goes by user number only)",
        ) from None
