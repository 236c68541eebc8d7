"""What every event dataset does the same way: plan, frame in jobs, write the cache entry, open it.

A subclass of :class:`EventDataset` says where its recordings are (:meth:`~EventDataset.plan`),
which jobs frame them (:meth:`~EventDataset.jobs`) and how to describe them. The jobs run in order,
in worker processes when ``dataset.num_workers_prepare > 1``; their frames go into one cache entry
(built once, under a lock, see :mod:`.cache`), which is opened as the train and test sets.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from torch.utils.data import Dataset

from ...errors import DataError
from ..download import download_files
from ..info import DataInfo, take_subset
from ..verify import verify_existing
from .aedat import EVENT_DTYPE, CorruptFileError, validate_events
from .cache import CachedFrames, CacheWriter, locked_build, transform_from_cfg
from .framing import FrameSpec, NoEventsError, frame_events, spec_from_cfg

__all__ = [
    "EventDataset",
    "EventsJob",
    "Job",
    "JobResult",
    "Plan",
    "Sample",
    "open_tonic",
    "read_tonic_sample",
    "run_ordered",
    "write_entry",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """What a preparation reads and the cache entry it writes; making one reads no recording."""

    source: str  # dataset.source
    root: Path  # dataset.root, resolved
    input: Path  # what is read: the release's folder or archive, or the root holding it
    spec: FrameSpec
    skip_corrupt: bool
    params: dict[str, Any]  # every parameter that changes the frames (hashed into the entry's name)
    entry: Path


@dataclass(frozen=True, eq=False)  # arrays: compared and hashed by identity
class Sample:
    sample_id: str  # names the sample in meta.json and in messages
    label: int  # class index, 0-based
    frames: np.ndarray  # [T, 2, H, W] event counts


@dataclass
class JobResult:
    """What one job made of one recording; ``error`` set means it has no usable sample."""

    split: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "where: problem" of samples left out
    error: CorruptFileError | None = None  # stops the build unless dataset.skip_corrupt

    @classmethod
    def failed(cls, split: str, error: CorruptFileError) -> JobResult:
        # without the traceback, which would keep the reader's buffers alive
        return cls(split, error=CorruptFileError(error.path, error.reason))


@dataclass(frozen=True)
class Job:
    """One unit of preparation work; picklable, so that it can run in a worker process."""

    spec: FrameSpec
    skip_corrupt: bool

    def run(self) -> list[JobResult]:
        """One result per recording, in the order the samples are to be cached."""
        raise NotImplementedError

    def one_sample(
        self,
        split: str,
        sample_id: str,
        label: int,
        events: np.ndarray,
        start: int | None = None,
        name: str | None = None,
    ) -> JobResult:
        """The result for a recording that is one sample; ``name`` (default: the id) names it in messages."""
        try:
            return JobResult(split, [Sample(sample_id, label, frame_events(events, self.spec, start))])
        except NoEventsError as exc:
            problem = f"empty sample ({exc})"
            if self.skip_corrupt:
                return JobResult(split, skipped=[f"{name or sample_id}: {problem}"])
            return JobResult(split, error=CorruptFileError(name or sample_id, problem))


@dataclass(frozen=True, eq=False)
class EventsJob(Job):
    """A recording already read in the main process (tonic's copies): one sample, or why there is none."""

    sample_id: str
    split: str
    label: int
    events: np.ndarray | CorruptFileError
    start: int | None = None  # the sample's nominal start; None: its first event

    def run(self) -> list[JobResult]:
        if isinstance(self.events, CorruptFileError):
            return [JobResult.failed(self.split, self.events)]
        return [self.one_sample(self.split, self.sample_id, self.label, self.events, self.start)]


def read_tonic_sample(ds: Any, index: int) -> np.ndarray | CorruptFileError:
    """Sample ``index`` of a tonic dataset as time-sorted :data:`EVENT_DTYPE` events, or why not.

    Sorted because we do not control how a third-party conversion orders its events.
    """
    path = ds.data[index]
    try:
        raw, _ = ds[index]
        events = np.empty(len(raw), dtype=EVENT_DTYPE)
        for name in EVENT_DTYPE.names:
            events[name] = raw[name]
        return validate_events(events, path, sort=True)
    except CorruptFileError as exc:
        return exc
    except Exception as exc:  # whatever the file's decoder raises on a truncated or corrupt file
        return CorruptFileError(path, f"unreadable ({type(exc).__name__}: {exc})")


def open_tonic(
    what: str, dataset: str, root: Path, files: list[Any], download: bool, make: Callable[[], T]
) -> T:
    """``make()``, a tonic dataset's constructor, once the archives ``files`` (:mod:`..sources`
    entries: those not extracted yet) are verified under ``root``, fetched first when ``download``:
    tonic then only extracts them. Its own download has no time-out, and figshare's ``ndownloader``
    links it uses answer scripts with an HTML page."""
    if download:
        download_files(dataset, files, root)  # one DataError line of its own
    else:
        for f in files:
            dest = root / f.folder / f.name
            problem = verify_existing(f, dest) if dest.is_file() else "missing"
            if problem is not None:  # tonic would try its own download
                raise DataError(
                    f"{what}: {dest}: {problem}; run snn-data download dataset={dataset} source=tonic, "
                    "or set dataset.download=true"
                )
    try:
        return make()
    except Exception as exc:  # whatever tarfile or zipfile raise
        raise DataError(
            f"{what}: extracting {', '.join(f.name for f in files)} under {root} failed "
            f"({type(exc).__name__}: {exc}); extract it there by hand"
        ) from None


def run_ordered(jobs: Iterable[Job], workers: int) -> Iterator[JobResult]:
    """The results of every job in job order; ``workers > 1`` runs the jobs in processes with a
    bounded number in flight (a job may carry whole recordings in memory)."""
    if workers <= 1:
        for job in jobs:
            yield from job.run()
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[list[JobResult]]] = deque()
        for job in jobs:
            pending.append(pool.submit(job.run))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def write_entry(
    plan: Plan,
    results: Iterable[JobResult],
    total: int | None,
    desc: str,
    progress: bool,
    info: dict[str, Any],
) -> dict[str, Any]:
    """Write ``plan.entry`` from the job results and return its metadata (``info`` is added to it).

    A result with an error stops the build unless ``plan.skip_corrupt``; ``total`` (None: unknown) is
    the number of results, for the progress bar.
    """
    from tqdm import tqdm

    writer = CacheWriter(plan.entry, plan.params, plan.spec.shape)
    skipped_files: list[str] = []
    skipped_samples: list[str] = []
    try:
        for r in tqdm(results, total=total, desc=desc, unit="file", disable=not progress, dynamic_ncols=True):
            if r.error is not None:
                if not plan.skip_corrupt:
                    raise CorruptFileError(
                        r.error.path, f"{r.error.reason} (dataset.skip_corrupt=true skips it)"
                    )
                log.warning("skipping %s: %s", r.error.path, r.error.reason)
                skipped_files.append(str(r.error))
                continue
            for msg in r.skipped:
                log.warning("skipping %s", msg)
            skipped_samples += r.skipped
            for s in r.samples:
                writer.add(r.split, s.frames, s.label, s.sample_id)
        for split in ("train", "test"):
            if not writer.labels.get(split):
                raise DataError(f"no {split} samples were produced from the data under {info.get('root')}")
        return writer.commit({**info, "skipped_files": skipped_files, "skipped_samples": skipped_samples})
    except BaseException:
        writer.abort()
        raise


class EventDataset:
    """One event dataset under one composed ``dataset`` config; subclasses fill in the hooks."""

    name: ClassVar[str]
    num_classes: ClassVar[int]
    paper_t: ClassVar[int]  # the paper's number of time steps for this dataset
    t_from: ClassVar[str] = "the paper's"  # whose T that is, for the note when a run differs
    default_source: ClassVar[str]

    def __init__(self, cfg: Any, time_steps: int) -> None:
        self.cfg = cfg
        self.time_steps = int(time_steps)
        self.built = False  # whether the last prepare() framed the entry (not found, nor left by another)

    @classmethod
    def build_datasets(cls, cfg: Any, time_steps: int) -> tuple[Dataset, Dataset, DataInfo]:
        """The registry's builder: ``(train, test, info)``, preparing the cache entry if needed."""
        return cls(cfg, time_steps).build()

    @property
    def source(self) -> str:
        return str(self.cfg.get("source", self.default_source))

    @property
    def root(self) -> Path:
        """``dataset.root``, resolved; a DataError when it is a file (it must be a folder, even one
        that does not exist yet)."""
        root = Path(os.path.expanduser(str(self.cfg.root))).resolve()
        if root.exists() and not root.is_dir():
            raise DataError(
                f"dataset.root: {root} is a file, not a directory; set dataset.root to the folder "
                f"that holds the data (here perhaps {root.parent})"
            )
        return root

    @property
    def spec(self) -> FrameSpec:
        return spec_from_cfg(self.cfg, self.time_steps)

    @property
    def skip_corrupt(self) -> bool:
        return bool(self.cfg.get("skip_corrupt", False))

    # --- what a subclass provides ------------------------------------------------------------------

    def plan(self) -> Plan:
        """Where the data is and the cache entry it maps to; reads no recording."""
        raise NotImplementedError

    def jobs(self, plan: Plan, info: dict[str, Any]) -> tuple[Plan, Iterable[Job], int | None]:
        """The jobs that frame ``plan``'s input, in cache order, and the number of results they give
        (None: unknown before the input is read). Fetching the data may change the input, so the
        plan comes back, re-made if needed. Source details for the metadata go into ``info``."""
        raise NotImplementedError

    def describe(self, meta: dict[str, Any]) -> tuple[str, list[str]]:
        """``DataInfo.source`` and the first notes for a prepared entry."""
        raise NotImplementedError

    def timing_note(self, spec: FrameSpec) -> str:
        """How the frames' time bins are chosen, as the DataInfo note words it."""
        return f" x {spec.bin_us / 1000:g} ms" if spec.framing == "paper" else f" ({spec.uniform_split})"

    # --- shared ------------------------------------------------------------------------------------

    def prepare(self, progress: bool = True) -> tuple[Path, dict[str, Any]]:
        """The cache entry for the config, built from the recordings when it does not exist yet."""
        plan = self.plan()
        built: list[bool] = []

        def build() -> tuple[Path, dict[str, Any]]:
            built.append(True)
            return self._build(plan, progress)

        entry, meta = locked_build(plan.entry, build)
        self.built = bool(built)
        return entry, meta

    def _build(self, plan: Plan, progress: bool) -> tuple[Path, dict[str, Any]]:
        info: dict[str, Any] = {"root": str(plan.root), "input": str(plan.input)}
        plan, jobs, total = self.jobs(plan, info)
        results = run_ordered(jobs, int(self.cfg.get("num_workers_prepare", 0)))
        meta = write_entry(plan, results, total, f"{self.name} {plan.source}", progress, info)
        return plan.entry, meta

    def build(self) -> tuple[Dataset, Dataset, DataInfo]:
        entry, meta = self.prepare(progress=True)
        source, notes = self.describe(meta)
        spec = self.spec
        notes.append(
            f"frames: {spec.framing} framing, T={spec.time_steps}{self.timing_note(spec)}"
            f", 2 x {spec.size} x {spec.size}, event counts (cache {entry.name})"
        )
        if spec.time_steps != self.paper_t:
            notes.append(
                f"T={spec.time_steps} differs from {self.t_from} T={self.paper_t} (+experiment={self.name})"
            )
        return self.open(entry, meta, source, notes)

    def open(
        self, entry: Path, meta: dict[str, Any], source: str, notes: list[str]
    ) -> tuple[Dataset, Dataset, DataInfo]:
        """Train and test sets of a complete entry, ``dataset.subset`` applied, and their DataInfo."""
        cfg = self.cfg
        frames = CachedFrames(entry, "train", transform_from_cfg(cfg, True))
        frames.eval_transform = transform_from_cfg(cfg, False)  # a validation split is not augmented
        train = take_subset(frames, cfg.get("subset"))
        test = take_subset(CachedFrames(entry, "test", transform_from_cfg(cfg, False)), cfg.get("subset"))
        size = int(meta["shape"][-1])
        skipped = len(meta.get("skipped_files", [])), len(meta.get("skipped_samples", []))
        if any(skipped):
            notes = [
                *notes,
                f"skipped {skipped[0]} corrupt files and {skipped[1]} samples (dataset.skip_corrupt=true)",
            ]
        extra = {
            "cache": str(entry),
            "frames_dtype": meta["dtype"],
            "max_count": meta["max_count"],
            "framing": meta["params"].get("frames"),
            "skipped_corrupt_files": skipped[0],
            "skipped_samples": skipped[1],
            "cached_train_samples": meta["splits"]["train"]["samples"],
            "cached_test_samples": meta["splits"]["test"]["samples"],
        }
        info = DataInfo(
            self.name,
            self.num_classes,
            2,
            (size, size),
            False,
            len(train),  # type: ignore[arg-type]
            len(test),  # type: ignore[arg-type]
            source=source,
            notes=notes,
            extra=extra,
        )
        return train, test, info
