"""The points of a sweep and the state of one run directory, for :mod:`.sweep_status`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .rundir import LOCK_NAME, run_files

__all__ = ["STATES", "Point", "SweepStatus", "point_state"]

STATES = ("done", "pruned", "running", "interrupted", "failed", "not started")


@dataclass
class Point:
    dir: str  # the job directory's name in the sweep
    state: str
    best_val_acc: float | None = None
    best_test_acc: float | None = None
    epochs: int | None = None
    what: str = ""  # the point's overrides, or the trial's parameters
    trial: int | None = None  # Optuna: the trial's number (a retry has its own)


@dataclass
class SweepStatus:
    sweep: str
    kind: str  # grid | optuna
    points: list[Point]
    note: str = ""

    def counts(self) -> dict[str, int]:
        return {s: n for s in STATES if (n := sum(p.state == s for p in self.points))}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


def _locked(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (probed without creating or following anything)."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock at once
    return False


def point_state(run_dir: Path) -> Point:
    """The state of one run directory, with its best accuracies."""
    point = Point(run_dir.name, "not started")
    if not run_dir.is_dir() or run_dir.is_symlink():
        return point
    summary: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((run_dir / "summary.json").read_text())
    status = summary.get("status") if isinstance(summary, dict) else None
    point.best_val_acc, point.best_test_acc = summary.get("best_val_acc"), summary.get("best_test_acc")
    point.epochs = summary.get("epochs_completed")
    if _locked(run_dir):
        point.state = "running"
    elif status == "ok":
        point.state = "done"
    elif status == "pruned":
        point.state = "pruned"
    elif status in ("failed", "non_finite_loss"):
        point.state = "failed"
    elif status == "preempted" or run_files(run_dir):
        point.state = "interrupted"
    if point.epochs is None and (run_dir / "metrics.jsonl").is_file():
        with contextlib.suppress(OSError, ValueError):
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
            point.epochs = len(rows)
            vals = [r["val_acc"] for r in rows if "val_acc" in r]
            tests = [r["test_acc"] for r in rows if "test_acc" in r]
            point.best_val_acc = max(vals) if vals else None
            point.best_test_acc = max(tests) if tests else None
    return point
