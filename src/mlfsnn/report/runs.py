"""Runs, grouping runs into configurations, and the statistics over a configuration's seeds (for
snn-report). Finding and reading run directories is :mod:`.rundirs`.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFINING",
    "IGNORED",
    "Row",
    "Run",
    "accuracy_curve",
    "any_val",
    "build_rows",
    "canon",
    "layer_stats",
    "load_paper_results",
    "match_paper",
    "sort_key",
    "varying_keys",
]

# (column, config key): these always define a configuration, whether or not they vary.
DEFINING = (
    ("dataset", "dataset.name"),
    ("block", "model.block"),
    ("K", "neuron.levels"),
    ("depth", "model.depth"),
    ("T", "time_steps"),
    ("widths", "model.widths"),
)
# Keys that never split a configuration: the seed (aggregated over), and keys that change where
# things are written or how a run is driven, not what is trained.
IGNORED = (
    "trainer.seed",
    "trainer.resume",
    "trainer.progress",
    "trainer.num_workers",
    "trainer.pin_memory",
    "trainer.device",
    "trainer.eval_batch_size",
    "trainer.checkpoint_every",
    "dataset.root",
    "dataset.download",
    "paths",
    "logger",
    "hydra",
    "name",
    "tags",
    "print_config",
    "trainer.detect_anomaly",
    "trainer.profile_steps",
)
_MISSING = object()


@dataclass
class Run:
    """One run directory as read from disk; numbers come from summary.json when there is one."""

    path: Path
    label: str  # relative to the scanned directories: stable across machines
    config: dict[str, Any]  # flattened ("model.depth": 20)
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def status(self) -> str:
        if self.summary is None:
            return "incomplete"
        return str(self.summary.get("status") or "ok")

    @property
    def seed(self) -> Any:
        return self.config.get("trainer.seed")

    def _evaluated(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics if _finite(r.get("test_acc"))]

    def _summary_or(self, key: str, fallback: Any) -> Any:
        # summary.json is authoritative; metrics.jsonl stands in for a run that has none (yet).
        value = (self.summary or {}).get(key)
        return value if _finite(value) else fallback

    @property
    def best_acc(self) -> float | None:
        return self._summary_or(
            "best_test_acc", max((r["test_acc"] for r in self._evaluated()), default=None)
        )

    @property
    def final_acc(self) -> float | None:
        evaluated = self._evaluated()
        return self._summary_or("final_test_acc", evaluated[-1]["test_acc"] if evaluated else None)

    def _last_trained(self, key: str) -> float | None:
        row = next((r for r in reversed(self.metrics) if _finite(r.get(key))), None)
        return self._summary_or(f"final_{key}", row[key] if row else None)

    @property
    def final_train_acc(self) -> float | None:
        """The last epoch's training accuracy (running mean, train mode): what degradation is about."""
        return self._last_trained("train_acc")

    @property
    def final_train_loss(self) -> float | None:
        return self._last_trained("train_loss")

    def train_curve(self) -> list[tuple[int, float]]:
        return [
            (r["epoch"], float(r["train_acc"]))
            for r in self.metrics
            if isinstance(r.get("epoch"), int) and _finite(r.get("train_acc"))
        ]

    def _best_val_row(self) -> dict[str, Any] | None:
        # The first epoch with the highest val accuracy: the trainer's choice too (it updates on >).
        return max(
            (r for r in self.metrics if _finite(r.get("val_acc"))), key=lambda r: r["val_acc"], default=None
        )

    @property
    def best_val_acc(self) -> float | None:
        row = self._best_val_row()
        return self._summary_or("best_val_acc", row["val_acc"] if row else None)

    @property
    def test_at_best_val(self) -> float | None:
        """Test accuracy of the epoch with the best val accuracy: the epoch is chosen without the test set."""
        row = self._best_val_row()
        return self._summary_or("test_acc_at_best_val", row.get("test_acc") if row else None)

    @property
    def epochs(self) -> int | None:
        epochs = [r["epoch"] for r in self.metrics if isinstance(r.get("epoch"), int)]
        return self._summary_or("epochs_completed", max(epochs, default=None))

    @property
    def num_params(self) -> int | None:
        return self._summary_or("num_params", None)

    @property
    def wall_time_s(self) -> float | None:
        """The run's cost: every process it took (summary.json counts each up to its last checkpoint)."""
        return self._summary_or("wall_time_s", None)

    def last_value(self, key: str) -> Any:
        """``key`` from the last metrics row that has it, else from the summary."""
        for row in reversed(self.metrics):
            if row.get(key) is not None:
                return row[key]
        return (self.summary or {}).get(key)

    def curve(self) -> list[tuple[int, float]]:
        return [
            (r["epoch"], float(r["test_acc"])) for r in self._evaluated() if isinstance(r.get("epoch"), int)
        ]


@dataclass
class Row:
    """One configuration: the values of the defining and varying keys, and its runs (seeds)."""

    values: dict[str, Any]  # config key -> value
    runs: list[Run]
    paper: list[dict[str, Any]] = field(default_factory=list)
    number: int = 0

    def stat(self, attr: str) -> tuple[float | None, float | None, int]:
        return _stat([getattr(r, attr) for r in self.runs])

    def mean_of(self, key: str) -> float | None:
        return _stat([r.last_value(key) for r in self.runs])[0]


def accuracy_curve(row: Row, train: bool = False) -> list[tuple[int, float, float | None]]:
    """(epoch, mean, std) of the test (``train``: training) accuracy over the seeds at that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in row.runs:
        for epoch, acc in run.train_curve() if train else run.curve():
            by_epoch.setdefault(epoch, []).append(acc)
    return [
        (e, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None)
        for e, v in sorted(by_epoch.items())
    ]


def any_val(rows: list[Row]) -> bool:
    """Whether any run of ``rows`` had a validation split (and so an honestly selected accuracy)."""
    return any(run.best_val_acc is not None for row in rows for run in row.runs)


def layer_stats(row: Row, key: str) -> dict[str, tuple[float, float | None]]:
    """Per-layer (mean, std) over seeds of ``firing_rate`` / ``dormant_ratio`` at the last evaluated
    epoch; NaNs and non-numbers are left out.

    Layers keep the order the run logged them in, which is the monitor's network order.
    """
    per_layer: dict[str, list[float]] = {}
    for run in row.runs:
        stats = run.last_value(key)
        if isinstance(stats, dict):
            for layer, value in stats.items():
                per_layer.setdefault(layer, []).append(value)
    out = {}
    for layer, values in per_layer.items():
        mean, std, _ = _stat(values)
        if mean is not None:
            out[layer] = (mean, std)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _stat(values: list[Any]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for one value, n) over the finite values."""
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals)


def canon(value: Any) -> str:
    """A hashable, order-independent text for a config value, so lists and dicts can group runs."""
    return json.dumps(value, sort_keys=True, default=str)


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED)


def varying_keys(runs: list[Run]) -> dict[str, list[Any]]:
    """Non-defining keys with two or more values among the runs that have them, with those values.

    A key that some runs lack (a dataset-specific option) varies only if the runs that have it disagree.
    """
    defining = {key for _, key in DEFINING}
    values: dict[str, dict[str, Any]] = {}
    for run in runs:
        for key, value in run.config.items():
            if key not in defining and not _ignored(key):
                values.setdefault(key, {})[canon(value)] = value
    return {k: sorted(v.values(), key=sort_key) for k, v in sorted(values.items()) if len(v) > 1}


def sort_key(value: Any) -> tuple:
    # Numbers before strings before lists before missing; numbers compare numerically (depth 8 < 14).
    if value is None or value is _MISSING:
        return (4, 0)
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, float(value))
    if isinstance(value, (list, tuple)):
        return (3, tuple(sort_key(v) for v in value))
    return (2, str(value))


def _natural(text: str) -> list:
    # Multirun job folders sort 0, 1, 2, ..., 10 rather than 0, 1, 10, 2.
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def match_paper(values: dict[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    wanted = {
        "dataset": values.get("dataset.name"),
        "block": values.get("model.block"),
        "levels": values.get("neuron.levels"),
        "depth": values.get("model.depth"),
        "time_steps": values.get("time_steps"),
    }
    return [
        e
        for e in entries
        if e.get("kind") == "this_paper" and all(e.get(k, _MISSING) == v for k, v in wanted.items())
    ]


def build_rows(runs: list[Run], paper: list[dict[str, Any]]) -> tuple[list[Row], list[str]]:
    """Group runs with a configuration into rows (sorted); returns the rows and the key columns."""
    usable = [r for r in runs if r.config]
    keys = [key for _, key in DEFINING] + list(varying_keys(usable))
    groups: dict[tuple, Row] = {}
    for run in usable:
        values = {k: run.config.get(k) for k in keys}
        row = groups.setdefault(tuple(canon(values[k]) for k in keys), Row(values, []))
        row.runs.append(run)
    rows = sorted(groups.values(), key=lambda r: [sort_key(r.values[k]) for k in keys])
    for number, row in enumerate(rows, 1):
        row.number = number
        row.runs.sort(key=lambda r: (sort_key(r.seed), _natural(r.label)))
        row.paper = match_paper(row.values, paper)
    return rows, keys


def load_paper_results() -> list[dict[str, Any]]:
    """The reference numbers shipped with the package (``paper_results.yaml``)."""
    import yaml

    text = importlib.resources.files("mlfsnn.report").joinpath("paper_results.yaml").read_text()
    entries = (yaml.safe_load(text) or {}).get("entries") or []
    return [e for e in entries if isinstance(e, dict)]
