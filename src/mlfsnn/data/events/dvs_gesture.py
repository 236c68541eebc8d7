"""DVS128 Gesture (IBM; 11 classes) with the paper's protocol (docs/method.md §6, docs/data.md).

``source=ibm`` reads the original release: ``DvsGesture.tar.gz`` (streamed, never extracted) or its
extracted ``DvsGesture/`` folder of ``userNN_<lighting>.aedat`` (AEDAT 3.1) and
``userNN_<lighting>_labels.csv``. One sample per label row; users 1-23 train, 24-29 test (the
release's split: 1176 / 288 samples). A sample's events are those with ``start <= t < end`` of its row.
``source=tonic`` uses ``tonic.datasets.DVSGesture``, a pre-cut copy with its own 1077 / 264 split.
"""

from __future__ import annotations

import functools
import gzip
import posixpath
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .. import register
from .aedat import CorruptFileError, read_aedat31_polarity
from .cache import entry_dir, fingerprint
from .dataset import EventDataset, Job, JobResult, Plan, Sample
from .framing import FrameSpec, NoEventsError, frame_events
from .gesture_tonic import tonic_jobs, tonic_sets
from .members import decode_list, max_recording_bytes, read_file, read_limited, text_cap

__all__ = [
    "DVSGesture",
    "GesturePlan",
    "TrialJob",
    "archive_files",
    "check_lists",
    "locate_ibm",
    "parse_labels",
    "split_of_user",
    "user_of",
]

URL_IBM = "https://research.ibm.com/interactive/dvsgesture/"
ARCHIVE = "DvsGesture.tar.gz"
FOLDER = "DvsGesture"
NUM_CLASSES = 11
PAPER_T = 40  # x 30 ms
PAPER_SAMPLES = {"train": 1176, "test": 288}
TONIC_SAMPLES = {"train": 1077, "test": 264}
TRIAL_LISTS = {"train": "trials_to_train.txt", "test": "trials_to_test.txt"}
TRIAL_FILE = re.compile(r"^user(\d+)_(\w+)\.aedat$")
LABELS_FILE = re.compile(r"^user(\d+)_(\w+)_labels\.csv$")
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)
# how many recordings' worth of bytes may wait in memory for their labels in a streamed archive
PENDING_RECORDINGS = 8


def user_of(trial: str) -> int:
    """The user number of a trial name such as ``user07_led``."""
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


@dataclass(frozen=True)
class GesturePlan(Plan):
    kind: str  # "folder" or "tar" (the IBM release), or "tonic"


@dataclass(frozen=True)
class TrialJob(Job):
    """One IBM recording and its labels file: a sample per label row.

    ``recording`` and ``labels`` are contents (bytes, from the archive), a path (str, read in the
    worker) or None (missing).
    """

    trial: str
    split: str
    recording: bytes | str | None
    recording_name: str
    labels: bytes | str | None
    labels_name: str

    def run(self) -> list[JobResult]:
        try:
            rows, events = self._read()
        except CorruptFileError as exc:
            return [JobResult.failed(self.split, exc)]
        return [self._frame_rows(rows, events)]

    def _read(self) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
        if self.labels is None:
            raise CorruptFileError(self.labels_name, f"missing (the labels of {self.recording_name})")
        if self.recording is None:
            raise CorruptFileError(self.recording_name, f"missing (the recording {self.labels_name} labels)")
        labels = self.labels if isinstance(self.labels, bytes) else read_file(self.labels, text_cap())
        rows = parse_labels(labels.decode("utf-8", "replace"), self.labels_name)
        buf = self.recording if isinstance(self.recording, bytes) else read_file(self.recording)
        events = read_aedat31_polarity(buf, self.recording_name)
        if len(events) == 0:
            raise CorruptFileError(self.recording_name, "no polarity events")
        return rows, events

    def _frame_rows(self, rows: list[tuple[int, int, int, int]], events: np.ndarray) -> JobResult:
        """A sample per row: the events with ``start <= t < end``. A row may overlap the recording
        only partly (the release, tonic and SpikingJelly keep those rows); one without any event is
        an error naming the labels file and line, or a skipped sample with ``skip_corrupt``."""
        result = JobResult(self.split)
        t = events["t"]
        for lineno, cls, start, end in rows:
            where = f"{self.labels_name} line {lineno}"
            lo, hi = (int(i) for i in np.searchsorted(t, [start, end]))
            if lo == hi:
                problem = (
                    f"label [{start}, {end}) us holds no event of the recording "
                    f"(its events span [{int(t[0])}, {int(t[-1])}] us)"
                )
            else:
                try:
                    frames = frame_events(events[lo:hi], self.spec, start)
                    result.samples.append(Sample(f"{self.trial}:{lineno}", cls - 1, frames))
                    continue
                except NoEventsError as exc:  # origin=start: nothing in the first T bins
                    problem = f"empty sample ({exc})"
            if not self.skip_corrupt:
                return JobResult(self.split, error=CorruptFileError(where, problem))
            result.skipped.append(f"{where}: {problem}")
        return result


def _folder_jobs(folder: Path, spec: FrameSpec, skip: bool, info: dict[str, Any]) -> list[TrialJob]:
    jobs = []
    for rec in sorted(folder.glob("user*.aedat")):
        m = TRIAL_FILE.match(rec.name)
        if m is None:
            continue
        trial = rec.name[: -len(".aedat")]
        labels = folder / f"{trial}_labels.csv"
        jobs.append(
            TrialJob(
                spec=spec,
                skip_corrupt=skip,
                trial=trial,
                split=split_of_user(int(m.group(1))),
                recording=str(rec),
                recording_name=str(rec),
                # not is_file(): a FIFO or a link to a device there is refused by name when read
                labels=str(labels) if labels.exists() or labels.is_symlink() else None,
                labels_name=str(labels),
            )
        )
    info["trials"] = {s: sorted(j.trial for j in jobs if j.split == s) for s in ("train", "test")}
    info["lists"] = {s: _read_list(folder / f) for s, f in TRIAL_LISTS.items()}
    return jobs


def _read_list(path: Path) -> list[str] | None:
    return decode_list(read_file(path, text_cap()), str(path)) if path.is_file() else None


def is_release_file(base: str) -> bool:
    """Whether the release's reader uses a file of this name (a recording, labels, a trial list)."""
    return bool(TRIAL_FILE.match(base) or LABELS_FILE.match(base) or base in TRIAL_LISTS.values())


def archive_files(archive: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """``(base name, read)`` of the archive's files in one streaming pass; ``read`` works until the
    next item, and is only called for the files wanted (recordings are large).

    ``read`` refuses a member above the size cap before inflating any of it (:mod:`.members`); a
    release file name that occurs twice (in two folders of the archive) is refused when the second
    one's header is read: the same trial would be framed twice.
    """

    def unreadable(exc: BaseException) -> CorruptFileError:
        return CorruptFileError(str(archive), f"unreadable archive ({type(exc).__name__}: {exc})")

    def read(tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes:
        try:
            with tar.extractfile(member) as fh:  # type: ignore[union-attr]
                return read_limited(fh, member.size, cap, f"{archive}:{member.name}")
        except _ARCHIVE_ERRORS as exc:
            raise unreadable(exc) from None

    caps = {"recording": max_recording_bytes(), "text": text_cap()}
    seen: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                if is_release_file(base):
                    if base in seen:
                        raise CorruptFileError(
                            str(archive),
                            f"{base} occurs twice ({seen[base]}, {member.name}): the same trial would "
                            "be counted twice; remove the copy",
                        )
                    seen[base] = member.name
                cap = caps["recording" if TRIAL_FILE.match(base) else "text"]
                yield base, functools.partial(read, tar, member, cap)
    except _ARCHIVE_ERRORS as exc:
        raise unreadable(exc) from None


def _tar_jobs(archive: Path, spec: FrameSpec, skip: bool, info: dict[str, Any]) -> Iterator[TrialJob]:
    """Stream the archive once; a recording is handed on as soon as its labels are also read."""
    recs: dict[str, bytes] = {}
    labels: dict[str, bytes] = {}
    info["trials"], info["lists"] = {"train": [], "test": []}, {"train": None, "test": None}
    tag = f"{archive}:"
    # recordings wait here for their labels: bounded, or a crafted archive could fill the memory
    budget = PENDING_RECORDINGS * max_recording_bytes()

    def job(trial: str) -> TrialJob:
        split = split_of_user(user_of(trial))
        info["trials"][split].append(trial)
        return TrialJob(
            spec=spec,
            skip_corrupt=skip,
            trial=trial,
            split=split,
            recording=recs.pop(trial, None),
            recording_name=f"{tag}{trial}.aedat",
            labels=labels.pop(trial, None),
            labels_name=f"{tag}{trial}_labels.csv",
        )

    for base, read in archive_files(archive):
        if base in TRIAL_LISTS.values():
            info["lists"]["train" if base == TRIAL_LISTS["train"] else "test"] = decode_list(
                read(), f"{tag}{base}"
            )
            continue
        if not (TRIAL_FILE.match(base) or LABELS_FILE.match(base)):
            continue
        trial = base[: -len(".aedat")] if base.endswith(".aedat") else base[: -len("_labels.csv")]
        (recs if base.endswith(".aedat") else labels)[trial] = read()
        if trial in recs and trial in labels:
            yield job(trial)
        elif sum(map(len, recs.values())) > budget:
            raise DataError(
                f"{archive}: more than {budget} bytes of recordings came before their labels files; "
                f"extract the archive (tar xzf {archive} -C {archive.parent}) and point dataset.root "
                "at that folder, which is read one recording at a time"
            )
    for trial in sorted(set(recs) | set(labels)):
        yield job(trial)
    info["notes"] = check_lists(info)  # the lists are only known once the archive has been read


def check_lists(info: dict[str, Any]) -> list[str]:
    """Notes on how the release's trial lists compare with the trials found (``info``'s ``trials``)."""
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


def describe_source(source: str, path: Path) -> tuple[str, list[str]]:
    if source == "tonic":
        return (
            f"tonic: {path} (tonic.datasets.DVSGesture, pre-cut npy)",
            ["tonic's DVSGesture split (1077 / 264) is not the paper's split (1176 / 288)"],
        )
    return f"ibm: {path} (AEDAT 3.1; users 1-23 train / 24-29 test)", []


class DVSGesture(EventDataset):
    name = "dvs_gesture"
    num_classes = NUM_CLASSES
    paper_t = PAPER_T
    default_source = "ibm"

    def plan(self) -> GesturePlan:
        source, root, spec, skip = self.source, self.root, self.spec, self.skip_corrupt
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
            "dataset": self.name,
            "source": source,
            "kind": kind,
            "frames": spec.key(),
            "skip_corrupt": skip,
            "inputs": fingerprint(files, base) if files else None,
            "split": "users 1-23 / 24-29" if source == "ibm" else "tonic",
        }
        entry = entry_dir(self.cfg.cache_dir, self.name, params)
        return GesturePlan(source, root, path, spec, skip, params, entry, kind)

    def jobs(self, plan: Plan, info: dict[str, Any]) -> tuple[Plan, Iterable[Job], int | None]:
        assert isinstance(plan, GesturePlan)
        spec, skip = plan.spec, plan.skip_corrupt
        if plan.kind == "tonic":
            train, test = tonic_sets(plan.root, bool(self.cfg.get("download", True)))
            # the download may just have created the files the cache key is made of
            return (
                self.plan(),
                tonic_jobs({"train": train, "test": test}, spec, skip),
                len(train) + len(test),
            )
        if plan.kind == "folder":
            jobs = _folder_jobs(plan.input, spec, skip, info)
            info["notes"] = check_lists(info)
            return plan, jobs, len(jobs)
        return plan, _tar_jobs(plan.input, spec, skip, info), None

    def describe(self, meta: dict[str, Any]) -> tuple[str, list[str]]:
        source, notes = describe_source(self.source, Path(meta.get("input", "")))
        return source, notes + [n for n in meta.get("notes", []) if n.startswith("WARNING")]

    def timing_note(self, spec: FrameSpec) -> str:
        return f" x {spec.bin_us / 1000:g} ms" if spec.framing == "paper" else ""


register(DVSGesture.name)(DVSGesture.build_datasets)
