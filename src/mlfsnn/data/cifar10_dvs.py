"""CIFAR10-DVS (10 classes x 1000 DVS128 recordings) with the paper's protocol (paper-notes §6).

``source=original``: the figshare release, ``<class>.zip`` or an extracted ``<class>/`` folder of
AEDAT 2.0 ``.aedat`` files per class under ``dataset.root``. ``source=tonic``:
``tonic.datasets.CIFAR10DVS`` (an AEDAT4 conversion; needs the ``aedat`` package).

There is no official split. Files of a class are put in natural order (``..._9`` before ``..._10``);
the last ``test_fraction`` of them (100 of 1000) is the test set (``split=sorted``), or a seeded
permutation decides (``split=shuffled``, ``split_seed``). Labels follow CIFAR-10's class order.
"""

from __future__ import annotations

import os
import re
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from . import register
from .cache import (
    build_entry,
    entry_dir,
    fingerprint,
    frame_job,
    locked_build,
    open_entry,
    run_ordered,
)
from .common import DataError, DataInfo
from .events import CorruptFileError, read_aedat2_dvs128, read_bytes, validate_events
from .framing import FrameSpec, spec_from_cfg

URL_ORIGINAL = "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = 1000
PAPER_T = 10  # x 10 ms
SPLITS = ("sorted", "shuffled")


def natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def locate_original(root: Path) -> dict[str, tuple[str, Path]]:
    """Per class ``("folder", dir)`` or ``("zip", archive)``; the extracted folder wins."""
    found: dict[str, tuple[str, Path]] = {}
    for cls in CLASSES:
        if (root / cls).is_dir():
            found[cls] = ("folder", root / cls)
        elif (root / f"{cls}.zip").is_file():
            found[cls] = ("zip", root / f"{cls}.zip")
    missing = [c for c in CLASSES if c not in found]
    if missing:
        raise DataError(
            f"CIFAR10-DVS (original release) incomplete under {root}: no {missing[0]}.zip or "
            f"{missing[0]}/ folder ({len(missing)} of 10 classes missing: {', '.join(missing)}); "
            f"download the per-class zips from {URL_ORIGINAL} into {root}, or set dataset.root"
        )
    return found


def class_files(kind: str, path: Path) -> list[str]:
    """The class's ``.aedat`` files (paths, or zip member names) in natural order of their names."""
    if kind == "folder":
        names = [str(p) for p in path.rglob("*.aedat")]
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".aedat") and not n.endswith("/")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise CorruptFileError(str(path), f"unreadable zip ({exc})") from None
    return sorted(names, key=lambda n: natural_key(os.path.basename(n)))


def split_indices(n: int, cfg: Any, class_index: int) -> tuple[list[int], list[int]]:
    fraction = float(cfg.get("test_fraction", 0.1))
    if not 0 < fraction < 1:
        raise DataError(f"dataset.test_fraction must be in (0, 1), got {fraction}")
    n_test = round(n * fraction)
    if n < 2 or n_test in (0, n):
        raise DataError(
            f"class {CLASSES[class_index]}: {n} recordings cannot be split {1 - fraction:g} / {fraction:g}"
        )
    mode = str(cfg.get("split", "sorted"))
    if mode == "sorted":
        order = list(range(n))
    elif mode == "shuffled":
        seed = int(cfg.get("split_seed", 0))
        order = np.random.default_rng([seed, class_index]).permutation(n).tolist()
    else:
        raise DataError(f"dataset.split: {mode!r} is not one of {', '.join(SPLITS)}")
    return sorted(order[: n - n_test]), sorted(order[n - n_test :])


_ZIPS: dict[str, zipfile.ZipFile] = {}  # per process: a worker reads many members of one archive


def _read(kind: str, container: str, member: str) -> bytes:
    if kind == "folder":
        return read_bytes(member)
    try:
        if container not in _ZIPS:
            _ZIPS[container] = zipfile.ZipFile(container)
        return _ZIPS[container].read(member)
    except (zipfile.BadZipFile, OSError, KeyError, EOFError) as exc:
        raise CorruptFileError(f"{container}:{member}", f"unreadable zip member ({exc})") from None


def recording_job(
    sample_id: str,
    split: str,
    kind: str,
    container: str,
    member: str,
    label: int,
    spec: FrameSpec,
    skip: bool,
) -> dict[str, Any]:
    name = member if kind == "folder" else f"{container}:{member}"
    try:
        events = read_aedat2_dvs128(_read(kind, container, member), name)
    except CorruptFileError as exc:
        return {"split": split, "samples": [], "skipped": [], "error": (exc.path, exc.reason)}
    # origin=start counts from the recording's timestamp 0 instead of its first event
    start = 0 if spec.origin == "start" else None
    return frame_job(sample_id, split, events, label, spec, skip, start, name)


def _original_jobs(found: dict[str, tuple[str, Path]], cfg: Any, spec: FrameSpec, skip: bool) -> list[tuple]:
    jobs: list[tuple] = []
    for label, cls in enumerate(CLASSES):
        kind, path = found[cls]
        files = class_files(kind, path)
        train, test = split_indices(len(files), cfg, label)
        for split, idx in (("train", train), ("test", test)):
            for i in idx:
                member = files[i]
                sample_id = (
                    os.path.relpath(member, path.parent) if kind == "folder" else f"{path.name}:{member}"
                )
                jobs.append((sample_id, split, kind, str(path), member, label, spec, skip))
    return jobs


def _tonic_set(root: Path, download: bool) -> Any:
    try:
        import aedat  # noqa: F401  (tonic's AEDAT4 reader imports it per file)
    except ModuleNotFoundError:
        raise DataError(
            "dataset.source=tonic reads AEDAT4 files with the 'aedat' package: "
            "pip install 'mlfsnn[aedat4]' (or use dataset.source=original)"
        ) from None
    import tonic.datasets

    cls = tonic.datasets.CIFAR10DVS
    loc = root / "CIFAR10DVS"
    have = (loc / cls.filename).is_file() and len(list(loc.glob("*/*.aedat4"))) >= 1000
    if not have and not download:
        raise DataError(
            f"tonic's CIFAR10DVS not found: expected {loc}/ with {cls.filename} and its "
            f"extracted class folders of .aedat4 files; download {cls.url} there, or set "
            "dataset.download=true"
        )
    socket.setdefaulttimeout(60)
    try:
        return cls(str(root))
    except Exception as exc:  # whatever urllib / zipfile raise
        raise DataError(
            f"tonic's CIFAR10DVS: download or extraction into {loc} failed "
            f"({type(exc).__name__}: {exc}); download {cls.url} into {loc} by hand"
        ) from None


def _tonic_jobs(ds: Any, cfg: Any, spec: FrameSpec, skip: bool) -> Iterator[tuple]:
    by_class: dict[int, list[int]] = {}
    for i, target in enumerate(ds.targets):
        by_class.setdefault(int(target), []).append(i)
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: natural_key(os.path.basename(ds.data[i])))
        train, test = split_indices(len(idx), cfg, label)
        for split, part in (("train", train), ("test", test)):
            for k in part:
                i = idx[k]
                path = ds.data[i]
                try:
                    raw, _ = ds[i]
                    events = np.empty(len(raw), dtype=[("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "?")])
                    for f in ("x", "y", "t", "p"):
                        events[f] = raw[f]
                    item: Any = validate_events(events, path, sort=True)
                except CorruptFileError as exc:
                    item = exc
                except Exception as exc:  # the aedat decoder on a truncated / corrupt file
                    item = CorruptFileError(path, f"unreadable ({type(exc).__name__}: {exc})")
                yield (os.path.relpath(path, ds.location_on_system), split, item, label, spec, skip)


def _tonic_job(
    sample_id: str, split: str, events: Any, label: int, spec: FrameSpec, skip: bool
) -> dict[str, Any]:
    if isinstance(events, CorruptFileError):
        return {"split": split, "samples": [], "skipped": [], "error": (events.path, events.reason)}
    return frame_job(sample_id, split, events, label, spec, skip, start=0 if spec.origin == "start" else None)


def plan(cfg: Any, time_steps: int) -> dict[str, Any]:
    """Where the data is and the cache entry it maps to; reads no recording."""
    source = str(cfg.get("source", "original"))
    root = Path(os.path.expanduser(str(cfg.root))).resolve()
    spec = spec_from_cfg(cfg, time_steps)
    skip = bool(cfg.get("skip_corrupt", False))
    if source == "original":
        found = locate_original(root)
        files = [
            f for kind, path in found.values() for f in ([path] if kind == "zip" else path.rglob("*.aedat"))
        ]
    elif source == "tonic":
        found, files = {}, list((root / "CIFAR10DVS").glob("*/*.aedat4"))
    else:
        raise DataError(f"dataset.source: {source!r} is not one of original, tonic")
    split = {"split": str(cfg.get("split", "sorted")), "test_fraction": float(cfg.get("test_fraction", 0.1))}
    if split["split"] == "shuffled":
        split["seed"] = int(cfg.get("split_seed", 0))
    params = {
        "dataset": "cifar10_dvs",
        "source": source,
        "frames": spec.key(),
        "split": split,
        "skip_corrupt": skip,
        "inputs": fingerprint(files, root) if files else None,
    }
    return {
        "source": source,
        "root": root,
        "found": found,
        "spec": spec,
        "skip": skip,
        "params": params,
        "entry": entry_dir(cfg.cache_dir, "cifar10_dvs", params),
    }


def prepare(cfg: Any, time_steps: int, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """The cache entry for ``cfg``, built from the recordings when it does not exist yet."""
    p = plan(cfg, time_steps)
    return locked_build(p["entry"], lambda: _build(p, cfg, time_steps, progress))


def _build(p: dict[str, Any], cfg: Any, time_steps: int, progress: bool) -> tuple[Path, dict[str, Any]]:
    spec, skip, workers = p["spec"], p["skip"], int(cfg.get("num_workers_prepare", 0))
    info = {"root": str(p["root"]), "input": str(p["root"])}
    if p["source"] == "tonic":
        ds = _tonic_set(p["root"], bool(cfg.get("download", True)))
        p = plan(cfg, time_steps)  # the download may just have created the files
        results, total = run_ordered(_tonic_job, _tonic_jobs(ds, cfg, spec, skip), workers), len(ds)
    else:
        jobs = _original_jobs(p["found"], cfg, spec, skip)
        results, total = run_ordered(recording_job, jobs, workers), len(jobs)
    meta = build_entry(
        p["entry"],
        p["params"],
        spec.shape,
        results,
        skip,
        total,
        f"cifar10_dvs {p['source']}",
        progress,
        info,
    )
    return p["entry"], meta


def describe_source(cfg: Any, root: Path) -> tuple[str, list[str]]:
    mode = str(cfg.get("split", "sorted"))
    split = (
        "sorted: per class, natural file-name order, last 10% test"
        if mode == "sorted"
        else f"shuffled per class with split_seed={cfg.get('split_seed', 0)}"
    )
    notes = [f"split 9:1 per class ({split}); the release has no official split"]
    if str(cfg.get("source", "original")) == "tonic":
        notes.append(
            "tonic's AEDAT4 conversion: pixel orientation and polarity not checked against the "
            "original AEDAT 2.0 files"
        )
        return f"tonic: {root / 'CIFAR10DVS'} (tonic.datasets.CIFAR10DVS, AEDAT4)", notes
    return f"original: {root} (figshare AEDAT 2.0)", notes


@register("cifar10_dvs")
def build(cfg: Any, time_steps: int) -> tuple[Dataset, Dataset, DataInfo]:
    entry, meta = prepare(cfg, time_steps, progress=True)
    source, notes = describe_source(cfg, Path(meta["root"]))
    spec = spec_from_cfg(cfg, time_steps)
    timing = f" x {spec.bin_us / 1000:g} ms" if spec.framing == "paper" else f" ({spec.uniform_split})"
    notes.append(
        f"frames: {spec.framing} framing, T={spec.time_steps}{timing}"
        + f", 2 x {spec.size} x {spec.size}, event counts (cache {entry.name})"
    )
    if spec.time_steps != PAPER_T:
        notes.append(f"T={spec.time_steps} differs from the paper's T={PAPER_T} (+experiment=cifar10_dvs)")
    return open_entry(entry, meta, cfg, "cifar10_dvs", len(CLASSES), source, notes)


def survey(cfg: Any) -> tuple[list[str], bool]:
    """What ``snn-data info`` reports: what is under ``dataset.root`` against what is expected."""
    root = Path(os.path.expanduser(str(cfg.root))).resolve()
    if str(cfg.get("source", "original")) == "tonic":
        import importlib.util

        import tonic.datasets

        cls = tonic.datasets.CIFAR10DVS
        loc = root / "CIFAR10DVS"
        counts = {c: len(list((loc / c).glob("*.aedat4"))) for c in CLASSES}
        has_aedat = importlib.util.find_spec("aedat") is not None
        lines = [
            f"expected: {loc}/ with {cls.filename} and <class>/*.aedat4 ({PER_CLASS} per class)",
            f"download: {cls.url} ({cls.filename})",
            f"found: {cls.filename} {'present' if (loc / cls.filename).is_file() else 'MISSING'}; "
            + ", ".join(f"{c} {n}" for c, n in counts.items()),
            f"aedat package: {'installed' if has_aedat else 'MISSING (pip install mlfsnn[aedat4])'}",
        ]
        return lines, has_aedat and all(n > 1 for n in counts.values())
    lines = [
        f"expected: {root}/<class>.zip or {root}/<class>/ with {PER_CLASS} AEDAT 2.0 .aedat files "
        f"for each of {', '.join(CLASSES)}",
        f"download: the ten per-class zips from {URL_ORIGINAL}",
    ]
    ok = True
    for cls in CLASSES:
        if (root / cls).is_dir():
            kind, path = "folder", root / cls
        elif (root / f"{cls}.zip").is_file():
            kind, path = "zip", root / f"{cls}.zip"
        else:
            lines.append(f"{cls}: MISSING")
            ok = False
            continue
        try:
            n = len(class_files(kind, path))
        except CorruptFileError as exc:
            lines.append(f"{cls}: {exc}")
            ok = False
            continue
        n_test = round(n * float(cfg.get("test_fraction", 0.1)))
        flag = "" if n == PER_CLASS else f" (expected {PER_CLASS})"
        lines.append(f"{cls}: {kind} {path.name}, {n} recordings{flag} -> {n - n_test} train / {n_test} test")
        ok &= n >= 2
    return lines, ok
