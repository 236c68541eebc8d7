"""The frame cache: event recordings are framed once, then every run reads frames from disk.

An entry lives in ``<cache_dir>/<dataset>/<key>/``, where ``key`` hashes every parameter that changes
the frames (source, the input files' names and sizes, split, framing, T, bin, size ...), so a changed
parameter is a new entry, never stale frames. An entry holds ``{split}_frames.npy`` (``[N, T, 2, H, W]``
counts in the narrowest unsigned dtype that holds the largest count), ``{split}_labels.npy`` and
``meta.json`` (parameters, sample ids, statistics, and the size and SHA-256 of every data file). It
is built in a temporary sibling folder and renamed into place when complete, so a crash or a
concurrent build never leaves half an entry. Opening an entry checks it (:mod:`.integrity`); a
damaged one is discarded and rebuilt from the source data.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ...errors import DataError, UserError
from ...files import (
    LinkRefused,
    atomic_write,
    atomic_write_text,
    discard_aside,
    ensure_dir,
    fsync_dir,
    open_append,
    open_lock,
)
from .aedat import CorruptFileError
from .cached import CachedFrames, FrameTransform, transform_from_cfg
from .integrity import check_entry, data_files, file_record, first_line, not_dir, writable_dir
from .members import read_file

__all__ = [
    "CACHE_VERSION",
    "CacheWriter",
    "CachedFrames",
    "FrameTransform",
    "cache_key",
    "entry_dir",
    "fingerprint",
    "load_meta",
    "locked_build",
    "transform_from_cfg",
]

CACHE_VERSION = 1  # bump when readers or framing change what a parameter set produces
_META = "meta.json"
CACHE_KEY = "dataset.cache_dir"  # how messages name the cache root (paths.cache_dir by default)
_META_CAP = 64 << 20  # meta.json lists every sample id: about 1 MB for CIFAR10-DVS's 10 000
_CHUNK = 256  # samples narrowed and written at a time
log = logging.getLogger(__name__)


def cache_key(params: dict[str, Any]) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_dir(cache_dir: str | Path, dataset: str, params: dict[str, Any]) -> Path:
    """Where the entry for ``params`` lives; a cache root that cannot be a directory is a DataError."""
    root = Path(os.path.expanduser(str(cache_dir))).resolve()
    not_dir(root, CACHE_KEY)
    return root / dataset / cache_key(params)


def load_meta(entry: Path) -> dict[str, Any] | None:
    """The entry's metadata, or None when the entry does not exist (or is not a complete entry)."""
    try:
        # bounded, regular files only: a meta.json linked to /dev/zero must not be read without end
        meta = json.loads(read_file(entry / _META, _META_CAP))
    except (CorruptFileError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("version") == CACHE_VERSION else None


def locked_build(
    entry: Path, build: Callable[[], tuple[Path, dict[str, Any]]]
) -> tuple[Path, dict[str, Any]]:
    """``(entry, meta)`` of a complete, intact entry, calling ``build`` only if there is none yet.

    The entry is checked without the lock (see :mod:`.integrity`), so concurrent runs open a good
    entry in parallel. Processes that must build take turns on a lock file in the cache's ``.locks``
    folder; the ones that waited find the finished entry and read it instead of rebuilding. Under
    the lock a damaged entry is discarded and leftover temporary folders of killed builds removed.
    """
    meta, seen, damage = _inspect(entry)
    if meta is not None and damage is None:
        return entry, meta
    # a read-only cache still serves complete entries; it only fails here, before any framing
    try:
        writable_dir(entry.parent.parent, CACHE_KEY)
        writable_dir(entry.parent, CACHE_KEY)
    except DataError as exc:
        if damage is None:
            raise
        raise DataError(f"damaged cache entry {entry}/{damage}, and it cannot be rebuilt: {exc}") from None
    with _build_lock(entry):
        if _identity(entry) != seen:  # another process built, rebuilt or discarded it meanwhile
            meta, seen, damage = _inspect(entry)
            if meta is not None and damage is None:
                return entry, meta
        try:
            if seen is not None:
                damage = damage or f"{_META}: not a complete cache entry"
                log.warning("damaged cache entry %s/%s; discarding it and rebuilding it", entry, damage)
                discard_aside(entry)
            for stale in entry.parent.glob(f".{entry.name}.tmp-*"):
                discard_aside(stale)
        except OSError as exc:
            raise DataError(_cache_os_error(exc, entry.parent, "cannot remove an old entry")) from None
        if damage is None:
            return build()
        try:
            return build()
        except UserError as exc:
            raise DataError(
                f"damaged cache entry {entry}/{damage}: the entry was removed, but rebuilding it from "
                f"the source data failed: {first_line(exc)}; make the source data available and run "
                "snn-data prepare with the same overrides"
            ) from None


def _identity(entry: Path) -> tuple[int, bytes] | None:
    """What tells this entry apart from a rebuilt one at the same path (None: there is none)."""
    try:
        ino = entry.stat().st_ino
    except OSError:
        return None
    try:
        return ino, read_file(entry / _META, _META_CAP)
    except CorruptFileError:
        return ino, b""


def _inspect(entry: Path) -> tuple[dict[str, Any] | None, tuple[int, bytes] | None, str | None]:
    """``(meta, identity, damage)``: identity None when nothing is there, damage None when intact."""
    seen = _identity(entry)
    if seen is None:
        return None, None, None
    meta = load_meta(entry)
    if meta is None:
        return None, seen, f"{_META}: unreadable, or not written by this cache version"
    return meta, seen, check_entry(entry, meta)


def _cache_os_error(exc: OSError, folder: Path, what: str, partial: bool = False) -> str:
    """The one line for an ``OSError`` while writing the cache: the folder, the reason, what to do."""
    removed = "the partial entry was removed; " if partial else ""
    if isinstance(exc, LinkRefused):  # its message already says what to do
        return f"{CACHE_KEY}: {what} in {folder}: {exc} ({removed}or point {CACHE_KEY} elsewhere)"
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = "free space there" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    return f"{CACHE_KEY}: {what} in {folder}: {reason}; {removed}{fix} or point {CACHE_KEY} at another folder"


@contextmanager
def _build_lock(entry: Path) -> Iterator[None]:
    locks = entry.parent.parent / ".locks"  # beside the dataset folders, so those hold entries only
    try:
        ensure_dir(locks)
        # never open(..., "w"): a link planted under the lock's name would have its target truncated
        fd = open_lock(locks / f"{entry.parent.name}-{entry.name}.lock")
    except OSError as exc:
        raise DataError(_cache_os_error(exc, locks, "cannot open the build lock")) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _narrowest(max_count: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_count <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_npy(f: BinaryIO, data: np.ndarray, dtype: np.dtype) -> None:
    """``data`` as a ``.npy`` file of ``dtype``, converted and written ``_CHUNK`` samples at a time.

    Plain writes, not a writable memory map: on a full disk a write fails with ``ENOSPC``, where a
    store into a mapped page of a sparse file kills the process with ``SIGBUS``.
    """
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": data.shape}
    np.lib.format.write_array_header_1_0(f, header)
    f.flush()
    for i in range(0, len(data), _CHUNK):
        _write_all(f.fileno(), np.ascontiguousarray(data[i : i + _CHUNK], dtype=dtype).tobytes())


class CacheWriter:
    """Builds one entry: ``add`` samples split by split, then ``commit``; ``abort`` on failure.

    Any ``OSError`` while writing (a full disk, a quota, a link planted in the cache) removes the
    temporary folder and becomes one :class:`DataError` naming the cache folder and the reason.
    """

    def __init__(self, entry: Path, params: dict[str, Any], frame_shape: tuple[int, ...]) -> None:
        self.entry = entry
        self.params = params
        self.shape = tuple(frame_shape)
        self.tmp: Path | None = None
        self._raw: dict[str, int] = {}  # split -> descriptor of its uint32 build file
        self.labels: dict[str, list[int]] = {}
        self.ids: dict[str, list[str]] = {}
        self.max_count: dict[str, int] = {}
        self.events: dict[str, int] = {}
        with self._writing("cannot create the frame cache"):
            ensure_dir(entry.parent)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))

    @contextmanager
    def _writing(self, what: str = "cannot write the frame cache") -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.abort()
            raise DataError(_cache_os_error(exc, self.entry.parent, what, partial=True)) from None

    def add(self, split: str, frames: np.ndarray, label: int, sample_id: str) -> None:
        if frames.shape != self.shape:
            raise DataError(f"{sample_id}: frames of shape {frames.shape}, expected {self.shape}")
        if frames.min() < 0 or frames.max() > np.iinfo(np.uint32).max:
            raise DataError(f"{sample_id}: event count outside 0..2^32-1")
        assert self.tmp is not None
        with self._writing():
            if split not in self._raw:
                # uint32 while building (no count can wrap); narrowed at commit once the maximum is known
                self._raw[split] = open_append(self.tmp / f"{split}.raw")
                self.labels[split], self.ids[split] = [], []
                self.max_count[split], self.events[split] = 0, 0
            _write_all(self._raw[split], frames.astype(np.uint32).tobytes())
        self.labels[split].append(int(label))
        self.ids[split].append(sample_id)
        self.max_count[split] = max(self.max_count[split], int(frames.max()))
        self.events[split] += int(frames.sum())

    def commit(self, info: dict[str, Any]) -> dict[str, Any]:
        """Narrow, write the final files and the metadata, and move the entry into place."""
        with self._writing():
            return self._commit(info)

    def _commit(self, info: dict[str, Any]) -> dict[str, Any]:
        assert self.tmp is not None
        max_count = max(self.max_count.values(), default=0)
        dtype = _narrowest(max_count)
        splits: dict[str, Any] = {}
        self._close_raw()
        for split in self.labels:
            n = len(self.labels[split])
            raw = np.memmap(self.tmp / f"{split}.raw", dtype=np.uint32, mode="r", shape=(n, *self.shape))
            atomic_write(self.tmp / f"{split}_frames.npy", lambda f, raw=raw: _write_npy(f, raw, dtype))
            del raw
            (self.tmp / f"{split}.raw").unlink()
            labels = np.asarray(self.labels[split], dtype=np.int64)
            atomic_write(
                self.tmp / f"{split}_labels.npy", lambda f, a=labels: _write_npy(f, a, np.dtype(np.int64))
            )
            classes, counts = np.unique(labels, return_counts=True)
            splits[split] = {
                "samples": n,
                "per_class": {int(c): int(k) for c, k in zip(classes, counts, strict=True)},
                "events": self.events[split],
                "mean_events_per_frame": self.events[split] / max(n * self.shape[0], 1),
                "max_count": self.max_count[split],
                "ids": self.ids[split],
            }
        # checked whenever the entry is opened (integrity.check_entry)
        files = {name: file_record(self.tmp / name) for name in data_files({"splits": splits})}
        meta = {
            "version": CACHE_VERSION,
            "build": uuid.uuid4().hex,  # tells a rebuilt entry from the one it replaced
            "params": self.params,
            "shape": list(self.shape),
            "dtype": dtype.name,
            "max_count": max_count,
            "splits": splits,
            "files": files,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **info,
        }
        atomic_write_text(self.tmp / _META, json.dumps(meta, indent=1, default=str))
        try:
            os.rename(self.tmp, self.entry)
        except OSError:
            # another process completed the same entry first; its frames are identical
            if load_meta(self.entry) is None:
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        fsync_dir(self.entry.parent)
        return meta

    def _close_raw(self) -> None:
        for fd in self._raw.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._raw = {}

    def abort(self) -> None:
        """Remove what this build wrote; safe to call more than once."""
        self._close_raw()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def fingerprint(files: Iterable[Path], base: Path) -> str:
    """A digest of the input files' relative names and sizes: replacing or re-downloading different
    data gives a new cache entry without reading any file."""
    h = hashlib.sha256()
    for f in sorted(files):
        try:
            size = f.stat().st_size
        except OSError as exc:  # a dangling link, a name too long, no permission
            raise CorruptFileError(str(f), f"cannot read ({exc.strerror or exc})") from None
        h.update(f"{f.relative_to(base).as_posix()}\0{size}\n".encode())
    return h.hexdigest()[:16]
