"""tonic's DVSGesture copy (``dataset.source=tonic``): pre-cut npy files with tonic's own split."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import DataError
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
    urls = f"{cls.train_url} ({cls.train_filename}) and {cls.test_url} ({cls.test_filename})"
    archives = [
        (cls.train_url, cls.train_filename, cls.train_md5),
        (cls.test_url, cls.test_filename, cls.test_md5),
    ]
    missing = [a for a in archives if not _tonic_extracted(loc, a[1])]
    if missing and not download:
        raise DataError(
            f"tonic's DVSGesture not found: expected {loc}/ with {cls.train_filename}, "
            f"{cls.test_filename} and their extracted folders; download {urls} there and extract "
            "them, or set dataset.download=true"
        )
    return open_tonic(
        "tonic's DVSGesture",
        loc,
        missing,
        urls,
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
