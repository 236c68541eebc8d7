"""CIFAR10-DVS (10 classes x 1000 DVS128 recordings) with the paper's protocol (docs/method.md §6).

``source=original``: the figshare release, ``<class>.zip`` or an extracted ``<class>/`` folder of
AEDAT 2.0 ``.aedat`` files per class under ``dataset.root``. ``source=tonic``:
``tonic.datasets.CIFAR10DVS`` (an AEDAT4 conversion; needs the ``aedat`` package).

There is no official split. Files of a class are put in natural order (``..._9`` before ``..._10``);
the last ``test_fraction`` of them (100 of 1000) is the test set (``split=sorted``), or a seeded
permutation decides (``split=shuffled``, ``split_seed``). Labels follow CIFAR-10's class order.
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .. import register
from ..sources import find_source
from .aedat import CorruptFileError, read_aedat2_dvs128
from .cache import entry_dir, fingerprint
from .dataset import EventDataset, EventsJob, Job, JobResult, Plan, open_tonic, read_tonic_sample
from .framing import FrameSpec
from .members import ZIP_READ_ERRORS, check_zip_members, read_file, read_zip_member, repeated

__all__ = [
    "CIFAR10DVS",
    "CifarPlan",
    "Recording",
    "RecordingsJob",
    "class_files",
    "locate_original",
    "natural_key",
    "recording_start",
    "split_indices",
]

URL_ORIGINAL = "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = 1000
PAPER_T = 10  # x 10 ms
SPLITS = ("sorted", "shuffled")
# Recordings of one archive per job: opening a 1000-member zip costs about as much as framing a
# recording, so a job reads several members from one open handle (and closes it when done).
_PER_JOB = 16


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
    """The class's ``.aedat`` files (paths, or zip member names) in natural order of their names.

    A file name that occurs twice (a member repeated in the zip, a copy in a subfolder) is refused:
    the order, and so the split, goes by file name, and one recording would be counted twice or
    land in train and in test. Zip members that cannot be read are refused here, before any work.
    """
    if kind == "folder":
        names = [str(p) for p in path.rglob("*.aedat")]
        twice = repeated(os.path.basename(n) for n in names)
        if twice:
            copies = sorted(n for n in names if os.path.basename(n) == twice[0])
            raise CorruptFileError(
                str(path),
                f"{len(twice)} recording file name(s) occur more than once ({', '.join(twice[:3])}; "
                f"e.g. {', '.join(copies[:2])}): the same recording would be counted twice; remove "
                "the copies",
            )
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if i.filename.endswith(".aedat") and not i.is_dir()]
        except ZIP_READ_ERRORS as exc:
            raise CorruptFileError(str(path), f"unreadable zip ({exc})") from None
        check_zip_members(path, infos, key="base")
        names = [i.filename for i in infos]
    return sorted(names, key=lambda n: natural_key(os.path.basename(n)))


def split_indices(
    n: int, cfg: Any, class_index: int, names: tuple[str, ...] = CLASSES
) -> tuple[list[int], list[int]]:
    """Indices (into the class's naturally ordered files) of its train and test recordings;
    ``names[class_index]`` names the class in messages."""
    fraction = float(cfg.get("test_fraction", 0.1))
    if not 0 < fraction < 1:
        raise DataError(f"dataset.test_fraction must be in (0, 1), got {fraction}")
    n_test = round(n * fraction)
    if n < 2 or n_test in (0, n):
        raise DataError(
            f"class {names[class_index]}: {n} recordings cannot be split {1 - fraction:g} / {fraction:g}"
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


@dataclass(frozen=True)
class CifarPlan(Plan):
    classes: dict[str, tuple[str, Path]]  # source=original: class -> ("folder", dir) | ("zip", archive)


@dataclass(frozen=True)
class Recording:
    sample_id: str
    split: str
    member: str  # a file's path (folder) or a zip member's name
    label: int


@dataclass(frozen=True)
class RecordingsJob(Job):
    """Recordings of one class folder or zip (``container``), each one sample."""

    kind: str  # "folder" or "zip"
    container: str
    recordings: tuple[Recording, ...]

    def run(self) -> list[JobResult]:
        if self.kind == "folder":
            return [
                self._frame(rec, rec.member, functools.partial(read_file, rec.member))
                for rec in self.recordings
            ]
        try:
            archive = zipfile.ZipFile(self.container)
        except ZIP_READ_ERRORS as exc:
            return [JobResult.failed(rec.split, self._unreadable(rec, exc)) for rec in self.recordings]
        with archive:
            return [
                self._frame(
                    rec,
                    f"{self.container}:{rec.member}",
                    functools.partial(read_zip_member, archive, rec.member, f"{self.container}:{rec.member}"),
                )
                for rec in self.recordings
            ]

    def _unreadable(self, rec: Recording, exc: BaseException) -> CorruptFileError:
        return CorruptFileError(f"{self.container}:{rec.member}", f"unreadable zip member ({exc})")

    def _frame(self, rec: Recording, name: str, read: Callable[[], bytes]) -> JobResult:
        try:
            events = read_aedat2_dvs128(read(), name)
        except CorruptFileError as exc:
            return JobResult.failed(rec.split, exc)
        return self.one_sample(rec.split, rec.sample_id, rec.label, events, recording_start(self.spec), name)


def recording_start(spec: FrameSpec) -> int | None:
    """The ``start`` :func:`~.framing.frame_events` gets for a whole recording: its timestamp 0 when
    the frames count from it (``origin=start``) or the window is cut there (``window_origin=absolute``:
    events at absolute ``t < T*bin``, as the release keeps them); None: from its first event."""
    return 0 if spec.origin == "start" or spec.window_origin == "absolute" else None


def _original_jobs(
    classes: dict[str, tuple[str, Path]], cfg: Any, spec: FrameSpec, skip: bool
) -> list[RecordingsJob]:
    jobs: list[RecordingsJob] = []
    for label, cls in enumerate(CLASSES):
        kind, path = classes[cls]
        files = class_files(kind, path)
        train, test = split_indices(len(files), cfg, label)
        recordings = [
            Recording(
                os.path.relpath(files[i], path.parent) if kind == "folder" else f"{path.name}:{files[i]}",
                split,
                files[i],
                label,
            )
            for split, idx in (("train", train), ("test", test))
            for i in idx
        ]
        for k in range(0, len(recordings), _PER_JOB):
            batch = tuple(recordings[k : k + _PER_JOB])
            jobs.append(
                RecordingsJob(spec=spec, skip_corrupt=skip, kind=kind, container=str(path), recordings=batch)
            )
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
    archive = find_source("cifar10_dvs", "tonic").files[0]
    have = (loc / cls.filename).is_file() and len(list(loc.glob("*/*.aedat4"))) >= 1000
    if not have and not download and not (loc / archive.name).is_file():
        raise DataError(
            f"tonic's CIFAR10DVS not found: expected {loc}/ with {cls.filename} and its "
            f"extracted class folders of .aedat4 files; run snn-data download dataset=cifar10_dvs "
            f"source=tonic (or download {archive.urls[0]} there), or set dataset.download=true"
        )
    files = [] if have else [archive]
    return open_tonic("tonic's CIFAR10DVS", "cifar10_dvs", root, files, download, lambda: cls(str(root)))


def _tonic_jobs(ds: Any, cfg: Any, spec: FrameSpec, skip: bool) -> Iterator[EventsJob]:
    by_class: dict[int, list[int]] = {}
    for i, target in enumerate(ds.targets):
        by_class.setdefault(int(target), []).append(i)
    start = recording_start(spec)
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: natural_key(os.path.basename(ds.data[i])))
        train, test = split_indices(len(idx), cfg, label)
        for split, part in (("train", train), ("test", test)):
            for k in part:
                yield EventsJob(
                    spec=spec,
                    skip_corrupt=skip,
                    sample_id=os.path.relpath(ds.data[idx[k]], ds.location_on_system),
                    split=split,
                    label=label,
                    events=read_tonic_sample(ds, idx[k]),
                    start=start,
                )


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


class CIFAR10DVS(EventDataset):
    name = "cifar10_dvs"
    num_classes = len(CLASSES)
    paper_t = PAPER_T
    default_source = "original"

    def plan(self) -> CifarPlan:
        source, root, spec, skip, cfg = self.source, self.root, self.spec, self.skip_corrupt, self.cfg
        if source == "original":
            classes = locate_original(root)
            files = [
                f
                for kind, path in classes.values()
                for f in ([path] if kind == "zip" else path.rglob("*.aedat"))
            ]
        elif source == "tonic":
            classes, files = {}, list((root / "CIFAR10DVS").glob("*/*.aedat4"))
        else:
            raise DataError(f"dataset.source: {source!r} is not one of original, tonic")
        split = {
            "split": str(cfg.get("split", "sorted")),
            "test_fraction": float(cfg.get("test_fraction", 0.1)),
        }
        if split["split"] == "shuffled":
            split["seed"] = int(cfg.get("split_seed", 0))
        params = {
            "dataset": self.name,
            "source": source,
            "frames": spec.key(),
            "split": split,
            "skip_corrupt": skip,
            "inputs": fingerprint(files, root) if files else None,
        }
        entry = entry_dir(cfg.cache_dir, self.name, params)
        return CifarPlan(source, root, root, spec, skip, params, entry, classes)

    def jobs(self, plan: Plan, info: dict[str, Any]) -> tuple[Plan, Iterable[Job], int | None]:
        assert isinstance(plan, CifarPlan)
        spec, skip = plan.spec, plan.skip_corrupt
        if plan.source == "tonic":
            ds = _tonic_set(plan.root, bool(self.cfg.get("download", True)))
            # the download may just have created the files the cache key is made of
            return self.plan(), _tonic_jobs(ds, self.cfg, spec, skip), len(ds)
        jobs = _original_jobs(plan.classes, self.cfg, spec, skip)
        return plan, jobs, sum(len(job.recordings) for job in jobs)

    def describe(self, meta: dict[str, Any]) -> tuple[str, list[str]]:
        return describe_source(self.cfg, Path(meta["root"]))

    def timing_note(self, spec: FrameSpec) -> str:
        note = super().timing_note(spec)
        if spec.window_origin == "absolute":
            note += (
                f", events at absolute t < {spec.time_steps * spec.bin_us / 1000:g} ms binned from the "
                "first event (the release's window, dataset.window_origin=absolute)"
            )
        return note


register(CIFAR10DVS.name)(CIFAR10DVS.build_datasets)
