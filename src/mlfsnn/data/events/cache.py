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
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import DataError, UserError
from .integrity import check_entry, data_files, file_record, first_line, not_dir, writable_dir

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
        meta = json.loads((entry / _META).read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("version") == CACHE_VERSION else None


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
        if seen is not None:
            damage = damage or f"{_META}: not a complete cache entry"
            log.warning("damaged cache entry %s/%s; discarding the entry and rebuilding it", entry, damage)
            _discard(entry)
        for stale in entry.parent.glob(f".{entry.name}.tmp-*"):
            _discard(stale)
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
        return ino, (entry / _META).read_bytes()
    except OSError:
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


@contextmanager
def _build_lock(entry: Path) -> Iterator[None]:
    locks = entry.parent.parent / ".locks"  # beside the dataset folders, so those hold entries only
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{entry.parent.name}-{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _discard(path: Path) -> None:
    """Remove an entry or a temporary folder; renamed first so that no one opens it half-deleted
    (a process still reading it keeps its open files), and a failed removal is retried next build."""
    if not path.name.startswith("."):
        aside = path.parent / f".{path.name}.tmp-damaged-{uuid.uuid4().hex[:8]}"
        os.rename(path, aside)
        path = aside
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _narrowest(max_count: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_count <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


class CacheWriter:
    """Builds one entry: ``add`` samples split by split, then ``commit``; ``abort`` on failure."""

    def __init__(self, entry: Path, params: dict[str, Any], frame_shape: tuple[int, ...]) -> None:
        self.entry = entry
        self.params = params
        self.shape = tuple(frame_shape)
        entry.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
        self._raw: dict[str, Any] = {}
        self.labels: dict[str, list[int]] = {}
        self.ids: dict[str, list[str]] = {}
        self.max_count: dict[str, int] = {}
        self.events: dict[str, int] = {}

    def add(self, split: str, frames: np.ndarray, label: int, sample_id: str) -> None:
        if frames.shape != self.shape:
            raise DataError(f"{sample_id}: frames of shape {frames.shape}, expected {self.shape}")
        if split not in self._raw:
            # uint32 while building (no count can wrap); narrowed at commit once the maximum is known
            self._raw[split] = open(self.tmp / f"{split}.raw", "wb")  # noqa: SIM115
            self.labels[split], self.ids[split] = [], []
            self.max_count[split], self.events[split] = 0, 0
        if frames.min() < 0 or frames.max() > np.iinfo(np.uint32).max:
            raise DataError(f"{sample_id}: event count outside 0..2^32-1")
        self._raw[split].write(frames.astype(np.uint32).tobytes())
        self.labels[split].append(int(label))
        self.ids[split].append(sample_id)
        self.max_count[split] = max(self.max_count[split], int(frames.max()))
        self.events[split] += int(frames.sum())

    def commit(self, info: dict[str, Any]) -> dict[str, Any]:
        """Narrow, write the final files and the metadata, and move the entry into place."""
        max_count = max(self.max_count.values(), default=0)
        dtype = _narrowest(max_count)
        splits: dict[str, Any] = {}
        for split, fh in self._raw.items():
            fh.close()
            n = len(self.labels[split])
            raw = np.memmap(self.tmp / f"{split}.raw", dtype=np.uint32, mode="r", shape=(n, *self.shape))
            out = np.lib.format.open_memmap(
                self.tmp / f"{split}_frames.npy", mode="w+", dtype=dtype, shape=(n, *self.shape)
            )
            for i in range(0, n, 256):
                out[i : i + 256] = raw[i : i + 256]
            out.flush()
            del out, raw
            (self.tmp / f"{split}.raw").unlink()
            labels = np.asarray(self.labels[split], dtype=np.int64)
            np.save(self.tmp / f"{split}_labels.npy", labels)
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
        (self.tmp / _META).write_text(json.dumps(meta, indent=1, default=str))
        try:
            os.rename(self.tmp, self.entry)
        except OSError:
            # another process completed the same entry first; its frames are identical
            if load_meta(self.entry) is None:
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        return meta

    def abort(self) -> None:
        for fh in self._raw.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class FrameTransform:
    """Load-time changes that leave the cache valid: clipping, binarising, training augmentation.

    The augmentation acts on the frames. For DVS-Gesture's 4x4 pooling a horizontal flip and a
    shift by ``k`` frame pixels equal the event-domain flip and a shift by ``4k`` sensor pixels.
    """

    def __init__(
        self, clip: int | None = None, binarize: bool = False, flip: float = 0.0, max_shift: int = 0
    ) -> None:
        self.clip, self.binarize, self.flip, self.max_shift = clip, binarize, flip, max_shift

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip > 0 and torch.rand(()) < self.flip:
            x = x.flip(-1)
        if self.max_shift > 0:
            dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
            x = _shift(x, dy, dx)
        if self.binarize:
            x = (x > 0).to(x.dtype)
        elif self.clip is not None:
            x = x.clamp(max=float(self.clip))
        return x


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two dims by (dy, dx), filling with zeros (events leaving the sensor)."""
    if dy == 0 and dx == 0:
        return x
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    src_y, dst_y = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


class CachedFrames(Dataset):
    """One split of a cache entry: ``(float32 [T, 2, H, W], label)``, memory-mapped lazily so that
    DataLoader workers each open their own map."""

    def __init__(
        self, entry: Path, split: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.path = entry / f"{split}_frames.npy"
        self.labels = np.load(entry / f"{split}_labels.npy")
        self.transform = transform
        self._frames: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._frames is None:
            self._frames = np.load(self.path, mmap_mode="r")
        x = torch.from_numpy(self._frames[i].astype(np.float32))
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_frames": None}


def fingerprint(files: Iterable[Path], base: Path) -> str:
    """A digest of the input files' relative names and sizes: replacing or re-downloading different
    data gives a new cache entry without reading any file."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f.relative_to(base).as_posix()}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def transform_from_cfg(cfg: Any, train: bool) -> FrameTransform | None:
    clip = cfg.get("clip")
    binarize = bool(cfg.get("binarize", False))
    augment = train and bool(cfg.get("augment", False))
    flip = float(cfg.get("flip_prob", 0.5)) if augment else 0.0
    shift = int(cfg.get("max_shift", 0)) if augment else 0
    if clip is None and not binarize and flip == 0 and shift == 0:
        return None
    if clip is not None and int(clip) < 1:
        raise DataError(f"dataset.clip must be >= 1 or null, got {clip}")
    return FrameTransform(None if clip is None else int(clip), binarize, flip, shift)
