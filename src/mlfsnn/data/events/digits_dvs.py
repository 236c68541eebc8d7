"""digits_dvs: scikit-learn's 1797 real handwritten digits as emulated DVS128 recordings.

The recordings are made by :mod:`.emulator` (the physics is documented there and in docs/data.md)
on first use, offline, and written in CIFAR10-DVS's on-disk format: AEDAT 2.0 files, one folder
per class, ``<root>/emulated-<digest>/<digit>/digits_dvs_<digit>_<k>.aedat`` (``k``: the digit's
rank among its class in scikit-learn's order; ``digest`` names the emulator version and
parameters, so changed parameters make a new set beside the old one). From there everything is
CIFAR10-DVS's path: :func:`.aedat.read_aedat2_dvs128`, its per-class split, the framing and the
frame cache.

Generation is atomic and safe against concurrent runs: under a lock file in ``<root>/.locks/``,
into a hidden temporary folder renamed into place once complete (``manifest.json`` written last).
A set found damaged (a file missing or of another size) is discarded and generated again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ...files import LinkRefused, atomic_write_text, discard_aside, ensure_dir, fsync_dir, held_lock
from .. import register
from .aedat import CorruptFileError
from .cache import entry_dir
from .cifar10_dvs import Recording, RecordingsJob, class_files, split_indices
from .dataset import EventDataset, Job, Plan
from .emulator import (
    AEDAT2_COMMENTS,
    EmulatorParams,
    aedat2_bytes,
    params_from_cfg,
    record_many,
    threshold_maps,
)
from .framing import FrameSpec
from .integrity import first_line, writable_dir
from .members import read_file, text_cap

__all__ = [
    "CLASSES",
    "DigitsDVS",
    "check_recordings",
    "ensure_recordings",
    "recordings_folder",
    "survey_digits",
]

CLASSES = tuple(str(d) for d in range(10))
SAMPLES = 1797  # scikit-learn's load_digits
MANIFEST = "manifest.json"
ROOT_KEY = "dataset.root"
_BATCH = 16  # images per pass of the pixel model
_PER_JOB = 16  # recordings framed per job
log = logging.getLogger(__name__)


def recordings_folder(root: Path, params: EmulatorParams) -> Path:
    return root / f"emulated-{params.digest()}"


def check_recordings(folder: Path, params: EmulatorParams) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, problem)``: problem None for a complete set, ``"missing"`` when there is none."""
    if not folder.exists() and not folder.is_symlink():
        return None, "missing"
    try:
        manifest = json.loads(read_file(folder / MANIFEST, text_cap()))
        if manifest.get("emulator") != params.key():
            return None, f"{MANIFEST}: written for other emulator parameters"
        files = manifest["files"]
        for rel, rec in files.items():
            size = (folder / rel).stat().st_size
            if size != rec["bytes"]:
                return None, f"{rel}: {size} bytes, expected {rec['bytes']}"
        found = sum(1 for c in CLASSES if (folder / c).is_dir() for _ in (folder / c).glob("*.aedat"))
    except FileNotFoundError as exc:
        return None, f"{exc.filename}: missing"
    except (CorruptFileError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable ({first_line(exc)})"
    if found != len(files):
        return None, f"{found} .aedat files in the class folders, {MANIFEST} lists {len(files)}"
    return manifest, None


def _os_error(exc: OSError, root: Path) -> DataError:
    if isinstance(exc, LinkRefused):
        return DataError(f"{ROOT_KEY}: cannot write the emulated recordings in {root}: {exc}")
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    return DataError(
        f"{ROOT_KEY}: cannot write the emulated recordings in {root}: {reason}{where}; free space there "
        f"or point {ROOT_KEY} (or paths.data_dir) at a writable folder"
    )


def ensure_recordings(
    root: Path, params: EmulatorParams, progress: bool | None = None
) -> tuple[Path, dict[str, Any]]:
    """``(folder, manifest)`` of the complete recordings for ``params``, generating them if needed."""
    folder = recordings_folder(root, params)
    manifest, problem = check_recordings(folder, params)
    if manifest is not None:
        return folder, manifest
    writable_dir(root, ROOT_KEY)
    try:
        with held_lock(ensure_dir(root / ".locks") / f"{folder.name}.lock"):
            manifest, problem = check_recordings(folder, params)  # another process may have made it
            if manifest is not None:
                return folder, manifest
            if problem != "missing":
                log.warning("damaged emulated recordings %s (%s); generating them again", folder, problem)
                discard_aside(folder)
            for stale in root.glob(f".{folder.name}.tmp-*"):  # left by a killed generator
                discard_aside(stale)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=root))
            try:
                manifest = generate(tmp, params, progress)
                os.rename(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(root)
    except OSError as exc:
        raise _os_error(exc, root) from None
    return folder, manifest


def _selection(targets: np.ndarray, per_class: int | None) -> list[tuple[int, int, int]]:
    """``(digit, rank within its class, index in load_digits)`` of the digits to record."""
    chosen = []
    for d in range(len(CLASSES)):
        idx = np.flatnonzero(targets == d)[:per_class]
        chosen += [(d, k, int(i)) for k, i in enumerate(idx)]
    return chosen


def generate(folder: Path, params: EmulatorParams, progress: bool | None = None) -> dict[str, Any]:
    """Write the recordings and ``manifest.json`` (last) into the empty ``folder``; the manifest."""
    from sklearn.datasets import load_digits
    from tqdm import tqdm

    data = load_digits()
    images, chosen = data.images / 16.0, _selection(data.target, params.per_class)
    maps = threshold_maps(params)
    for c in CLASSES:
        (folder / c).mkdir()
    files: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(chosen), desc="digits_dvs: emulating", unit="digit", disable=progress is False)
    with bar:
        for b in range(0, len(chosen), _BATCH):
            batch = chosen[b : b + _BATCH]
            for (d, k, i), ev in zip(
                batch, record_many([images[i] for _, _, i in batch], params, maps), strict=True
            ):
                rel = f"{d}/digits_dvs_{d}_{k}.aedat"
                note = f"digit {d}: scikit-learn load_digits() image {i}; emulator {json.dumps(params.key())}"
                blob = aedat2_bytes(ev, (*AEDAT2_COMMENTS, note))
                with open(folder / rel, "xb") as fh:
                    fh.write(blob)
                files[rel] = {"bytes": len(blob), "events": len(ev), "index": i, "label": d}
            bar.update(len(batch))
    events = [f["events"] for f in files.values()]
    manifest = {
        "format": "AEDAT 2.0, DVS128 addresses (read like CIFAR10-DVS)",
        "emulated": "mlfsnn.data.events.emulator: not recorded by a sensor",
        "emulator": params.key(),
        "build": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.perf_counter() - t0, 2),
        "recordings": len(files),
        "events": int(sum(events)),
        "events_per_recording": {"mean": float(np.mean(events)), "min": min(events), "max": max(events)},
        "files": files,
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    log.info("digits_dvs: %d recordings emulated in %.1f s", len(files), manifest["seconds"])
    return manifest


def _split(cfg: Any) -> dict[str, Any]:
    split = {"split": str(cfg.get("split", "sorted")), "test_fraction": float(cfg.get("test_fraction", 0.2))}
    if split["split"] == "shuffled":
        split["seed"] = int(cfg.get("split_seed", 0))
    return split


@dataclass(frozen=True)
class DigitsPlan(Plan):
    emulator: EmulatorParams


class DigitsDVS(EventDataset):
    name = "digits_dvs"
    num_classes = len(CLASSES)
    paper_t = 10  # no paper: the preset's T (+experiment=digits_dvs)
    t_from = "the preset's"
    default_source = "emulator"

    def plan(self) -> DigitsPlan:
        """The cache key hashes the emulator's version and parameters, which make the recordings, so
        planning (``snn-data info``) generates nothing; preparing the entry does (:meth:`jobs`)."""
        source, root, spec, skip = self.source, self.root, self.spec, self.skip_corrupt
        if source != "emulator":
            raise DataError(f"dataset.source: {source!r} is not one of emulator")
        params = params_from_cfg(self.cfg.get("emulator"))
        folder = recordings_folder(root, params)
        key = {
            "dataset": self.name,
            "source": source,
            "emulator": params.key(),
            "inputs": folder.name,
            "frames": spec.key(),
            "split": _split(self.cfg),
            "skip_corrupt": skip,
        }
        entry = entry_dir(self.cfg.cache_dir, self.name, key)
        return DigitsPlan(source, root, folder, spec, skip, key, entry, params)

    def jobs(self, plan: Plan, info: dict[str, Any]) -> tuple[Plan, Iterable[Job], int | None]:
        assert isinstance(plan, DigitsPlan)
        folder, manifest = ensure_recordings(plan.root, plan.emulator)
        info["recordings"] = str(folder)
        info["emulated"] = {k: manifest[k] for k in ("build", "created", "seconds", "recordings", "events")}
        jobs = _jobs(folder, self.cfg, plan.spec, plan.skip_corrupt)
        return plan, jobs, sum(len(job.recordings) for job in jobs)

    def describe(self, meta: dict[str, Any]) -> tuple[str, list[str]]:
        return describe_source(self.cfg, meta.get("recordings", meta.get("input", "")))


def _jobs(folder: Path, cfg: Any, spec: FrameSpec, skip: bool) -> list[RecordingsJob]:
    jobs = []
    for label, cls in enumerate(CLASSES):
        files = class_files("folder", folder / cls)
        train, test = split_indices(len(files), cfg, label, CLASSES)
        recordings = [
            Recording(os.path.relpath(files[i], folder), split, files[i], label)
            for split, idx in (("train", train), ("test", test))
            for i in idx
        ]
        for k in range(0, len(recordings), _PER_JOB):
            batch = tuple(recordings[k : k + _PER_JOB])
            jobs.append(
                RecordingsJob(
                    spec=spec, skip_corrupt=skip, kind="folder", container=str(folder / cls), recordings=batch
                )
            )
    return jobs


def describe_source(cfg: Any, folder: str) -> tuple[str, list[str]]:
    split = _split(cfg)
    fraction = split["test_fraction"]
    how = (
        "per class in scikit-learn's order, the last"
        if split["split"] == "sorted"
        else f"per class shuffled with split_seed={split.get('seed')}, a"
    )
    notes = [
        "EMULATED event data (mlfsnn's DVS emulator on scikit-learn's real digits, saccades as "
        "N-MNIST), not recorded by a sensor: docs/data.md",
        f"split {1 - fraction:g} / {fraction:g}: {how} {fraction:g} test",
    ]
    return f"emulated: {folder} (AEDAT 2.0, DVS128 addresses)", notes


def survey_digits(cfg: Any) -> tuple[list[str], bool]:
    """``snn-data info``'s lines: whether the recordings for the configured emulator exist."""
    root = Path(os.path.expanduser(str(cfg.root))).resolve()
    params = params_from_cfg(cfg.get("emulator"))
    folder = recordings_folder(root, params)
    n = SAMPLES if params.per_class is None else f"up to {params.per_class * len(CLASSES)}"
    lines = [
        f"expected: {folder}/<digit>/*.aedat: {n} emulated recordings (AEDAT 2.0), generated on first "
        "use (snn-data prepare or snn-train), offline",
        "download: nothing to download (made from scikit-learn's bundled digits)",
    ]
    manifest, problem = check_recordings(folder, params)
    if manifest is not None:
        lines.append(
            f"found: {manifest['recordings']} recordings, {manifest['events']} events "
            f"(emulated {manifest['created']} in {manifest['seconds']} s)"
        )
    else:
        lines.append(
            "found: not generated yet"
            if problem == "missing"
            else f"found: damaged ({problem}); regenerated on use"
        )
    return lines, True


register(DigitsDVS.name)(DigitsDVS.build_datasets)
