"""DVS128 Gesture (IBM; 11 classes) with the paper's protocol (paper-notes §6, docs/data.md).

``source=ibm`` reads the original release: ``DvsGesture.tar.gz`` (streamed, never extracted) or its
extracted ``DvsGesture/`` folder of ``userNN_<lighting>.aedat`` (AEDAT 3.1) and
``userNN_<lighting>_labels.csv``. One sample per label row; users 1-23 train, 24-29 test (the
release's split: 1176 / 288 samples). A sample's events are those with ``start <= t < end`` of its row.
``source=tonic`` uses ``tonic.datasets.DVSGesture``, a pre-cut copy with its own 1077 / 264 split.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import re
import socket
import tarfile
import zlib
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
from .events import CorruptFileError, read_aedat31_polarity, read_bytes, validate_events
from .framing import FrameSpec, NoEventsError, frame_events, spec_from_cfg

URL_IBM = "https://research.ibm.com/interactive/dvsgesture/"
ARCHIVE = "DvsGesture.tar.gz"
FOLDER = "DvsGesture"
NUM_CLASSES = 11
PAPER_T = 40  # x 30 ms
PAPER_SAMPLES = {"train": 1176, "test": 288}
TONIC_SAMPLES = {"train": 1077, "test": 264}
TRIAL_LISTS = {"train": "trials_to_train.txt", "test": "trials_to_test.txt"}
_TRIAL = re.compile(r"^user(\d+)_(\w+)\.aedat$")
_LABELS = re.compile(r"^user(\d+)_(\w+)_labels\.csv$")


def _user(trial: str) -> int:
    return int(trial[len("user") :].split("_")[0])


def split_of_user(user: int) -> str:
    if 1 <= user <= 23:
        return "train"
    if 24 <= user <= 29:
        return "test"
    raise DataError(f"user {user}: the IBM release has users 1-29 (1-23 train, 24-29 test)")


def locate_ibm(root: Path) -> tuple[str, Path]:
    """``("folder", dir)`` or ``("tar", archive)``; the extracted folder wins when both exist."""
    for folder in (root / FOLDER, root):
        if folder.is_dir() and any(folder.glob("user*.aedat")):
            return "folder", folder
    if (root / ARCHIVE).is_file():
        return "tar", root / ARCHIVE
    raise DataError(
        f"DVS-Gesture (IBM release) not found: expected {root / ARCHIVE} or {root / FOLDER}/ "
        f"holding userNN_<lighting>.aedat files; download {ARCHIVE} from {URL_IBM} into {root}, "
        "or set dataset.root"
    )


def parse_labels(text: str, name: str) -> list[tuple[int, int, int, int]]:
    """``(line, class 1..11, start_us, end_us)`` rows of a ``_labels.csv`` (header line optional)."""
    rows: list[tuple[int, int, int, int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            cls, start, end = (int(v) for v in line.split(","))
        except ValueError:
            if lineno == 1:
                continue  # "class,startTime_usec,endTime_usec"
            raise CorruptFileError(
                name, f"line {lineno}: expected 'class,start_usec,end_usec', got {line!r}"
            ) from None
        if not 1 <= cls <= NUM_CLASSES:
            raise CorruptFileError(name, f"line {lineno}: class {cls} is not in 1..{NUM_CLASSES}")
        if end <= start:
            raise CorruptFileError(name, f"line {lineno}: end {end} is not after start {start}")
        rows.append((lineno, cls, start, end))
    if not rows:
        raise CorruptFileError(name, "no label rows")
    return rows


def trial_job(
    trial: str,
    split: str,
    recording: bytes | str | None,
    rec_name: str,
    labels: bytes | str | None,
    labels_name: str,
    spec: FrameSpec,
    skip: bool,
) -> dict[str, Any]:
    """Frames of every label row of one recording. ``recording`` / ``labels`` are contents (bytes),
    a path (str) or None (missing)."""
    out: dict[str, Any] = {"split": split, "samples": [], "skipped": [], "error": None}
    try:
        if labels is None:
            raise CorruptFileError(labels_name, f"missing (the labels of {rec_name})")
        if recording is None:
            raise CorruptFileError(rec_name, f"missing (the recording {labels_name} labels)")
        text = (labels if isinstance(labels, bytes) else read_bytes(labels)).decode("utf-8", "replace")
        rows = parse_labels(text, labels_name)
        buf = recording if isinstance(recording, bytes) else read_bytes(recording)
        events = read_aedat31_polarity(buf, rec_name)
        del buf
        if len(events) == 0:
            raise CorruptFileError(rec_name, "no polarity events")
    except CorruptFileError as exc:
        out["error"] = (exc.path, exc.reason)
        return out
    t = events["t"]
    first, last = int(t[0]), int(t[-1])
    for lineno, cls, start, end in rows:
        where = f"{labels_name} line {lineno}"
        if start < first or end > last + 1:
            problem = f"label [{start}, {end}) us lies outside the recording's events [{first}, {last}] us"
        else:
            lo, hi = np.searchsorted(t, [start, end])
            try:
                frames = frame_events(events[lo:hi], spec, start)
                out["samples"].append((f"{trial}:{lineno}", cls - 1, frames))
                continue
            except NoEventsError as exc:
                problem = f"empty sample ({exc})"
        if not skip:
            return {**out, "samples": [], "error": (where, problem)}
        out["skipped"].append(f"{where}: {problem}")
    return out


def _folder_jobs(folder: Path, spec: FrameSpec, skip: bool, info: dict[str, Any]) -> list[tuple]:
    jobs = []
    for rec in sorted(folder.glob("user*.aedat")):
        m = _TRIAL.match(rec.name)
        if m is None:
            continue
        trial = rec.name[: -len(".aedat")]
        labels = folder / f"{trial}_labels.csv"
        jobs.append(
            (
                trial,
                split_of_user(int(m.group(1))),
                str(rec),
                str(rec),
                str(labels) if labels.is_file() else None,
                str(labels),
                spec,
                skip,
            )
        )
    info["trials"] = {s: sorted(j[0] for j in jobs if j[1] == s) for s in ("train", "test")}
    info["lists"] = {s: _read_list(folder / f) for s, f in TRIAL_LISTS.items()}
    return jobs


def _read_list(path: Path) -> list[str] | None:
    return path.read_text().split() if path.is_file() else None


def _tar_jobs(archive: Path, spec: FrameSpec, skip: bool, info: dict[str, Any]) -> Iterator[tuple]:
    """Stream the archive once; a recording is handed on as soon as its labels are also read."""
    recs: dict[str, bytes] = {}
    labels: dict[str, bytes] = {}
    info["trials"], info["lists"] = {"train": [], "test": []}, {"train": None, "test": None}
    tag = f"{archive}:"

    def job(trial: str) -> tuple:
        split = split_of_user(_user(trial))
        info["trials"][split].append(trial)
        return (
            trial,
            split,
            recs.pop(trial, None),
            f"{tag}{trial}.aedat",
            labels.pop(trial, None),
            f"{tag}{trial}_labels.csv",
            spec,
            skip,
        )

    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                base = posixpath.basename(member.name)
                if not member.isfile() or not (
                    _TRIAL.match(base) or _LABELS.match(base) or base in TRIAL_LISTS.values()
                ):
                    continue
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if base in TRIAL_LISTS.values():
                    split = "train" if base == TRIAL_LISTS["train"] else "test"
                    info["lists"][split] = data.decode().split()
                    continue
                trial = base[: -len(".aedat")] if base.endswith(".aedat") else base[: -len("_labels.csv")]
                (recs if base.endswith(".aedat") else labels)[trial] = data
                if trial in recs and trial in labels:
                    yield job(trial)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise CorruptFileError(str(archive), f"unreadable archive ({type(exc).__name__}: {exc})") from None
    for trial in sorted(set(recs) | set(labels)):
        yield job(trial)
    info["notes"] = _check_lists(info)  # the lists are only known once the archive has been read


def _check_lists(info: dict[str, Any]) -> list[str]:
    notes = []
    for split, listed in info["lists"].items():
        if listed is None:
            notes.append(f"{TRIAL_LISTS[split]} not found; split by user number only")
            continue
        ours = {f"{t}.aedat" for t in info["trials"][split]}
        if ours != set(listed):
            users = "1-23" if split == "train" else "24-29"
            notes.append(
                f"WARNING {TRIAL_LISTS[split]} differs from the users-{users} split: only listed "
                f"{sorted(set(listed) - ours)[:5]}, only found {sorted(ours - set(listed))[:5]}"
            )
    return notes


def _tonic_sets(root: Path, download: bool) -> tuple[Any, Any]:
    import tonic.datasets

    cls = tonic.datasets.DVSGesture
    loc = root / "DVSGesture"
    urls = f"{cls.train_url} ({cls.train_filename}) and {cls.test_url} ({cls.test_filename})"
    have = all(
        (loc / f).is_file() and len(list((loc / f.replace(".tar.gz", "")).glob("*/*.npy"))) >= 100
        for f in (cls.train_filename, cls.test_filename)
    )
    if not have and not download:
        raise DataError(
            f"tonic's DVSGesture not found: expected {loc}/ with {cls.train_filename}, "
            f"{cls.test_filename} and their extracted folders; download {urls} there and extract "
            "them, or set dataset.download=true"
        )
    socket.setdefaulttimeout(60)  # an unreachable host must fail, not hang the run
    try:
        return cls(str(root), train=True), cls(str(root), train=False)
    except Exception as exc:  # tonic raises whatever urllib / tarfile raise
        raise DataError(
            f"tonic's DVSGesture: download or extraction into {loc} failed "
            f"({type(exc).__name__}: {exc}); download {urls} into {loc} by hand"
        ) from None


def _tonic_jobs(sets: dict[str, Any], spec: FrameSpec, skip: bool) -> Iterator[tuple]:
    for split, ds in sets.items():
        for i, path in enumerate(ds.data):
            sample_id = os.path.relpath(path, ds.location_on_system)
            try:
                events, label = ds[i]  # tonic's reader: np.load, ms -> us
                item: Any = validate_events(events, path, sort=True)
            except CorruptFileError as exc:
                item, label = exc, -1
            except Exception as exc:  # np.load on a truncated or corrupt npy
                item, label = CorruptFileError(path, f"unreadable ({type(exc).__name__}: {exc})"), -1
            yield (sample_id, split, item, int(label), spec, skip)


def _tonic_job(
    sample_id: str, split: str, events: Any, label: int, spec: FrameSpec, skip: bool
) -> dict[str, Any]:
    if isinstance(events, CorruptFileError):
        return {"split": split, "samples": [], "skipped": [], "error": (events.path, events.reason)}
    return frame_job(sample_id, split, events, label, spec, skip)


def plan(cfg: Any, time_steps: int) -> dict[str, Any]:
    """Where the data is and the cache entry it maps to; reads no recording."""
    source = str(cfg.get("source", "ibm"))
    root = Path(os.path.expanduser(str(cfg.root))).resolve()
    spec = spec_from_cfg(cfg, time_steps)
    skip = bool(cfg.get("skip_corrupt", False))
    if source == "ibm":
        kind, path = locate_ibm(root)
        files = [path] if kind == "tar" else [*path.glob("user*.aedat"), *path.glob("user*_labels.csv")]
        base = path.parent
    elif source == "tonic":
        kind, path, base = "tonic", root / "DVSGesture", root
        files = list(path.glob("ibmGesture*/*/*.npy"))
    else:
        raise DataError(f"dataset.source: {source!r} is not one of ibm, tonic")
    params = {
        "dataset": "dvs_gesture",
        "source": source,
        "kind": kind,
        "frames": spec.key(),
        "skip_corrupt": skip,
        "inputs": fingerprint(files, base) if files else None,
        "split": "users 1-23 / 24-29" if source == "ibm" else "tonic",
    }
    entry = entry_dir(cfg.cache_dir, "dvs_gesture", params)
    return {
        "source": source,
        "root": root,
        "kind": kind,
        "path": path,
        "spec": spec,
        "skip": skip,
        "params": params,
        "entry": entry,
    }


def prepare(cfg: Any, time_steps: int, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """The cache entry for ``cfg``, built from the recordings when it does not exist yet."""
    p = plan(cfg, time_steps)
    return locked_build(p["entry"], lambda: _build(p, cfg, time_steps, progress))


def _build(p: dict[str, Any], cfg: Any, time_steps: int, progress: bool) -> tuple[Path, dict[str, Any]]:
    spec, skip, workers = p["spec"], p["skip"], int(cfg.get("num_workers_prepare", 0))
    info: dict[str, Any] = {"root": str(p["root"]), "input": str(p["path"])}
    if p["source"] == "tonic":
        train, test = _tonic_sets(p["root"], bool(cfg.get("download", True)))
        p = plan(cfg, time_steps)  # the download may just have created the files
        results = run_ordered(_tonic_job, _tonic_jobs({"train": train, "test": test}, spec, skip), workers)
        total: int | None = len(train) + len(test)
    elif p["kind"] == "folder":
        jobs = _folder_jobs(p["path"], spec, skip, info)
        info["notes"] = _check_lists(info)
        results, total = run_ordered(trial_job, jobs, workers), len(jobs)
    else:
        results, total = run_ordered(trial_job, _tar_jobs(p["path"], spec, skip, info), workers), None
    meta = build_entry(
        p["entry"],
        p["params"],
        spec.shape,
        results,
        skip,
        total,
        f"dvs_gesture {p['source']}",
        progress,
        info,
    )
    return p["entry"], meta


def describe_source(source: str, path: Path) -> tuple[str, list[str]]:
    if source == "tonic":
        return (
            f"tonic: {path} (tonic.datasets.DVSGesture, pre-cut npy)",
            ["tonic's DVSGesture split (1077 / 264) is not the paper's split (1176 / 288)"],
        )
    return f"ibm: {path} (AEDAT 3.1; users 1-23 train / 24-29 test)", []


@register("dvs_gesture")
def build(cfg: Any, time_steps: int) -> tuple[Dataset, Dataset, DataInfo]:
    entry, meta = prepare(cfg, time_steps, progress=True)
    source, notes = describe_source(str(cfg.get("source", "ibm")), Path(meta.get("input", "")))
    notes += [n for n in meta.get("notes", []) if n.startswith("WARNING")]
    spec = spec_from_cfg(cfg, time_steps)
    notes.append(
        f"frames: {spec.framing} framing, T={spec.time_steps}"
        + (f" x {spec.bin_us / 1000:g} ms" if spec.framing == "paper" else "")
        + f", 2 x {spec.size} x {spec.size}, event counts (cache {entry.name})"
    )
    if spec.time_steps != PAPER_T:
        notes.append(f"T={spec.time_steps} differs from the paper's T={PAPER_T} (+experiment=dvs_gesture)")
    return open_entry(entry, meta, cfg, "dvs_gesture", NUM_CLASSES, source, notes)


def _inventory(kind: str, path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[str] | None]]:
    """``trial -> {"rec": bool, "labels": text | None}`` and the trial lists; reads no recording."""
    trials: dict[str, dict[str, Any]] = {}
    lists: dict[str, list[str] | None] = {"train": None, "test": None}

    def note(base: str, read: Any) -> None:
        if base in TRIAL_LISTS.values():
            lists["train" if base == TRIAL_LISTS["train"] else "test"] = read().decode().split()
        elif _TRIAL.match(base):
            trials.setdefault(base[: -len(".aedat")], {"rec": False, "labels": None})["rec"] = True
        elif _LABELS.match(base):
            trials.setdefault(base[: -len("_labels.csv")], {"rec": False, "labels": None})["labels"] = (
                read().decode("utf-8", "replace")
            )

    if kind == "folder":
        for f in sorted(path.iterdir()):
            note(f.name, f.read_bytes)
    else:
        try:
            with tarfile.open(path, "r|gz") as tar:
                for m in tar:
                    if m.isfile():
                        note(posixpath.basename(m.name), lambda m=m: tar.extractfile(m).read())  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            raise CorruptFileError(str(path), f"unreadable archive ({type(exc).__name__}: {exc})") from None
    return trials, lists


def survey(cfg: Any) -> tuple[list[str], bool]:
    """What ``snn-data info`` reports: what is under ``dataset.root`` against what is expected."""
    source = str(cfg.get("source", "ibm"))
    root = Path(os.path.expanduser(str(cfg.root))).resolve()
    if source == "tonic":
        import tonic.datasets

        cls = tonic.datasets.DVSGesture
        loc = root / "DVSGesture"
        lines = [
            f"expected: {loc}/ with {cls.train_filename}, {cls.test_filename} and their extracted "
            f"folders (userNN_<lighting>/<label>.npy): {TONIC_SAMPLES['train']} / "
            f"{TONIC_SAMPLES['test']} samples (tonic's split, not the paper's)",
            f"download: {cls.train_url} ({cls.train_filename}), {cls.test_url} ({cls.test_filename})",
        ]
        ok = True
        for split, fname in (("train", cls.train_filename), ("test", cls.test_filename)):
            n = len(list((loc / fname.replace(".tar.gz", "")).glob("*/*.npy")))
            archive = "present" if (loc / fname).is_file() else "MISSING"
            ok &= n >= 100 and archive == "present"
            lines.append(f"found {split}: {n} npy files (expected {TONIC_SAMPLES[split]}), {fname} {archive}")
        return lines, ok
    lines = [
        f"expected: {root / ARCHIVE} or {root / FOLDER}/ with userNN_<lighting>.aedat (AEDAT 3.1), "
        f"userNN_<lighting>_labels.csv, {TRIAL_LISTS['train']}, {TRIAL_LISTS['test']}; users 1-23 "
        f"train, 24-29 test: {PAPER_SAMPLES['train']} / {PAPER_SAMPLES['test']} samples",
        f"download: {ARCHIVE} from {URL_IBM}",
    ]
    try:
        kind, path = locate_ibm(root)
    except DataError:
        return [*lines, f"found: nothing under {root}"], False
    trials, lists = _inventory(kind, path)
    rows = {"train": 0, "test": 0}
    recs = {"train": 0, "test": 0}
    problems: list[str] = []
    for trial, item in sorted(trials.items()):
        split = split_of_user(_user(trial))
        if not item["rec"]:
            problems.append(f"{trial}.aedat missing")
            continue
        recs[split] += 1
        if item["labels"] is None:
            problems.append(f"{trial}_labels.csv missing")
            continue
        try:
            rows[split] += len(parse_labels(item["labels"], f"{trial}_labels.csv"))
        except CorruptFileError as exc:
            problems.append(str(exc))
    lines.append(
        f"found: {kind} {path}: {recs['train']} train + {recs['test']} test recordings, label "
        f"rows {rows['train']} / {rows['test']} (the paper: {PAPER_SAMPLES['train']} / "
        f"{PAPER_SAMPLES['test']})"
    )
    info = {
        "trials": {
            s: [t for t, it in trials.items() if it["rec"] and split_of_user(_user(t)) == s]
            for s in ("train", "test")
        },
        "lists": lists,
    }
    lines += [f"note: {n}" for n in _check_lists(info)] + [f"problem: {p}" for p in problems]
    return lines, not problems and rows["train"] > 0 and rows["test"] > 0
