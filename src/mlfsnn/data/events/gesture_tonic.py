"""tonic's DVSGesture copy (``dataset.source=tonic``): pre-cut npy files with tonic's own split."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import DataError
from ..sources import find_source
from .dataset import EventsJob, open_tonic, read_tonic_sample
from .framing import FrameSpec

__all__ = ["tonic_jobs", "tonic_sets"]


def _tonic_extracted(loc: Path, filename: str) -> bool:
    """Whether tonic will use what is there: the archive, and at least 100 npy files extracted from it."""
    folder = loc / filename.replace(".tar.gz", "")
    return (loc / filename).is_file() and len(list(folder.glob("*/*.npy"))) >= 100


def tonic_sets(root: Path, download: bool) -> tuple[Any, Any]:
    import tonic.datasets

    cls = tonic.datasets.DVSGesture
    loc = root / "DVSGesture"
    archives = find_source("dvs_gesture", "tonic").files
    missing = [a for a in archives if not _tonic_extracted(loc, a.name)]
    absent = [a for a in missing if not (loc / a.name).is_file()]
    if absent and not download:
        urls = " and ".join(f"{a.urls[0]} ({a.name})" for a in archives)
        raise DataError(
            f"tonic's DVSGesture not found: expected {loc}/ with {cls.train_filename}, "
            f"{cls.test_filename} and their extracted folders; run snn-data download "
            f"dataset=dvs_gesture source=tonic (or download {urls} there), or set dataset.download=true"
        )
    return open_tonic(
        "tonic's DVSGesture",
        "dvs_gesture",
        root,
        missing,
        download,
        lambda: (cls(str(root), train=True), cls(str(root), train=False)),
    )


def tonic_jobs(sets: dict[str, Any], spec: FrameSpec, skip: bool) -> Iterator[EventsJob]:
    for split, ds in sets.items():
        for i, path in enumerate(ds.data):
            yield EventsJob(
                spec=spec,
                skip_corrupt=skip,
                sample_id=os.path.relpath(path, ds.location_on_system),
                split=split,
                label=int(ds.targets[i]),
                events=read_tonic_sample(ds, i),  # tonic's reader: np.load, ms -> us
            )
