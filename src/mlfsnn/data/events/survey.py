"""What ``snn-data info`` reports: what is under ``dataset.root`` against what is expected.

Nothing here parses a recording: it lists files, reads label files and trial lists, and counts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import DataError
from ..sources import find_source
from . import cifar10_dvs as cd
from . import dvs_gesture as dg
from .aedat import CorruptFileError
from .members import decode_list, read_file, text_cap

__all__ = ["survey"]


def survey(cfg: Any) -> tuple[list[str], bool]:
    """Report lines for the composed ``dataset`` config ``cfg``, and whether the data looks complete."""
    root = Path(os.path.expanduser(str(cfg.root))).resolve()
    if cfg.name == "dvs_gesture":
        return _gesture_tonic(root) if str(cfg.get("source", "ibm")) == "tonic" else _gesture_ibm(root)
    if cfg.name == "digits_dvs":  # emulated on first use: nothing to download
        from .digits_dvs import survey_digits

        return survey_digits(cfg)
    if str(cfg.get("source", "original")) == "tonic":
        return _cifar_tonic(root)
    return _cifar_original(root, float(cfg.get("test_fraction", 0.1)))


def _download_line(dataset: str, source: str, what: str = "") -> str:
    files = find_source(dataset, source).files
    where = what or ", ".join(f"{f.urls[0]} ({f.name})" for f in files)
    return f"download: snn-data download dataset={dataset} source={source} ({where})"


def _gesture_inventory(
    kind: str, path: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str] | None]]:
    """``trial -> {"rec": bool, "labels": text | None}`` and the trial lists; parses no recording."""
    trials: dict[str, dict[str, Any]] = {}
    lists: dict[str, list[str] | None] = {"train": None, "test": None}

    def note(base: str, read: Callable[[], bytes]) -> None:
        if base in dg.TRIAL_LISTS.values():
            lists["train" if base == dg.TRIAL_LISTS["train"] else "test"] = decode_list(read(), base)
        elif dg.TRIAL_FILE.match(base):
            trials.setdefault(base[: -len(".aedat")], {"rec": False, "labels": None})["rec"] = True
        elif dg.LABELS_FILE.match(base):
            trials.setdefault(base[: -len("_labels.csv")], {"rec": False, "labels": None})["labels"] = (
                read().decode("utf-8", "replace")
            )

    if kind == "folder":
        for f in sorted(path.iterdir()):
            note(f.name, functools.partial(read_file, f, text_cap()))  # only lists and labels are read
    else:
        for base, read in dg.archive_files(path):
            note(base, read)
    return trials, lists


def _gesture_tonic(root: Path) -> tuple[list[str], bool]:
    import tonic.datasets

    cls = tonic.datasets.DVSGesture
    loc = root / "DVSGesture"
    lines = [
        f"expected: {loc}/ with {cls.train_filename}, {cls.test_filename} and their extracted "
        f"folders (userNN_<lighting>/<label>.npy): {dg.TONIC_SAMPLES['train']} / "
        f"{dg.TONIC_SAMPLES['test']} samples (tonic's split, not the paper's)",
        _download_line("dvs_gesture", "tonic"),
    ]
    ok = True
    for split, fname in (("train", cls.train_filename), ("test", cls.test_filename)):
        n = len(list((loc / fname.replace(".tar.gz", "")).glob("*/*.npy")))
        archive = "present" if (loc / fname).is_file() else "MISSING"
        ok &= n >= 100 and archive == "present"
        lines.append(f"found {split}: {n} npy files (expected {dg.TONIC_SAMPLES[split]}), {fname} {archive}")
    return lines, ok


def _gesture_ibm(root: Path) -> tuple[list[str], bool]:
    lines = [
        f"expected: {root / dg.ARCHIVE} or {root / dg.FOLDER}/ with userNN_<lighting>.aedat (AEDAT 3.1), "
        f"userNN_<lighting>_labels.csv, {dg.TRIAL_LISTS['train']}, {dg.TRIAL_LISTS['test']}; users 1-23 "
        f"train, 24-29 test: {dg.PAPER_SAMPLES['train']} / {dg.PAPER_SAMPLES['test']} samples",
        f"download: {dg.ARCHIVE} from {dg.URL_IBM}",
    ]
    try:
        kind, path = dg.locate_ibm(root)
    except DataError:
        return [*lines, f"found: nothing under {root}"], False
    trials, lists = _gesture_inventory(kind, path)
    rows = {"train": 0, "test": 0}
    recs = {"train": 0, "test": 0}
    problems: list[str] = []
    for trial, item in sorted(trials.items()):
        split = dg.split_of_user(dg.user_of(trial))
        if not item["rec"]:
            problems.append(f"{trial}.aedat missing")
            continue
        recs[split] += 1
        if item["labels"] is None:
            problems.append(f"{trial}_labels.csv missing")
            continue
        try:
            rows[split] += len(dg.parse_labels(item["labels"], f"{trial}_labels.csv"))
        except CorruptFileError as exc:
            problems.append(str(exc))
    lines.append(
        f"found: {kind} {path}: {recs['train']} train + {recs['test']} test recordings, label "
        f"rows {rows['train']} / {rows['test']} (the paper: {dg.PAPER_SAMPLES['train']} / "
        f"{dg.PAPER_SAMPLES['test']})"
    )
    info = {
        "trials": {
            s: [t for t, it in trials.items() if it["rec"] and dg.split_of_user(dg.user_of(t)) == s]
            for s in ("train", "test")
        },
        "lists": lists,
    }
    lines += [f"note: {n}" for n in dg.check_lists(info)] + [f"problem: {p}" for p in problems]
    return lines, not problems and rows["train"] > 0 and rows["test"] > 0


def _cifar_tonic(root: Path) -> tuple[list[str], bool]:
    import importlib.util

    import tonic.datasets

    cls = tonic.datasets.CIFAR10DVS
    loc = root / "CIFAR10DVS"
    counts = {c: len(list((loc / c).glob("*.aedat4"))) for c in cd.CLASSES}
    has_aedat = importlib.util.find_spec("aedat") is not None
    lines = [
        f"expected: {loc}/ with {cls.filename} and <class>/*.aedat4 ({cd.PER_CLASS} per class)",
        _download_line("cifar10_dvs", "tonic"),
        f"found: {cls.filename} {'present' if (loc / cls.filename).is_file() else 'MISSING'}; "
        + ", ".join(f"{c} {n}" for c, n in counts.items()),
        f"aedat package: {'installed' if has_aedat else 'MISSING (pip install mlfsnn[aedat4])'}",
    ]
    return lines, has_aedat and all(n > 1 for n in counts.values())


def _cifar_original(root: Path, test_fraction: float) -> tuple[list[str], bool]:
    lines = [
        f"expected: {root}/<class>.zip or {root}/<class>/ with {cd.PER_CLASS} AEDAT 2.0 .aedat files "
        f"for each of {', '.join(cd.CLASSES)}",
        _download_line("cifar10_dvs", "original", f"the ten per-class zips of {cd.URL_ORIGINAL}"),
    ]
    ok = True
    for cls in cd.CLASSES:
        if (root / cls).is_dir():
            kind, path = "folder", root / cls
        elif (root / f"{cls}.zip").is_file():
            kind, path = "zip", root / f"{cls}.zip"
        else:
            lines.append(f"{cls}: MISSING")
            ok = False
            continue
        try:
            n = len(cd.class_files(kind, path))
        except CorruptFileError as exc:
            lines.append(f"{cls}: {exc}")
            ok = False
            continue
        n_test = round(n * test_fraction)
        flag = "" if n == cd.PER_CLASS else f" (expected {cd.PER_CLASS})"
        lines.append(f"{cls}: {kind} {path.name}, {n} recordings{flag} -> {n - n_test} train / {n_test} test")
        ok &= n >= 2
    return lines, ok
