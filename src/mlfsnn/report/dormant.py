"""Dormant units in four readings (docs/method.md §8), from what ``snn-eval`` wrote beside each run.

``snn-eval checkpoint=RUN_DIR`` evaluates the run's best checkpoint on the test set and stores
``dormant_readings`` ({reading: {layer: fraction}}) in ``RUN_DIR/eval.json``. This module averages
them over a configuration's seeds: a report.md section (each reading's mean over layers),
``dormant_readings.csv`` (every layer) and the per-layer figure. An eval.json made with overrides
(another T, another data set) describes another setting and is left out.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from .runs import DEFINING, Row, Run
from .tables import format_value, short_labels

__all__ = ["READINGS", "readings_csv", "readings_markdown", "row_readings", "run_readings"]

# (key in eval.json, column header, what it counts)
READINGS = (
    ("unit", "dormant units", "(sample, neuron) pairs whose potential never entered a window"),
    ("step", "dormant steps", "(sample, neuron, step) triples with no level in its window"),
    ("silent", "silent units", "(sample, neuron) pairs that never spiked"),
    ("dead", "dead neurons", "neurons dormant for every test sample"),
)


def run_readings(run: Run) -> dict[str, dict[str, float]] | None:
    """``dormant_readings`` of the run's eval.json, when it was made with the run's own settings."""
    path = run.path / "eval.json"
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("overrides"):
        return None
    readings = data.get("dormant_readings")
    if not isinstance(readings, dict):
        return None
    out = {}
    for key, _, _ in READINGS:
        layers = readings.get(key)
        if isinstance(layers, dict):
            out[key] = {str(k): float(v) for k, v in layers.items() if _fraction(v)}
    return out or None


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def row_readings(row: Row) -> dict[str, dict[str, tuple[float, float | None, int]]]:
    """{reading: {layer: (mean, std, n)}} over the seeds of ``row`` that have readings; layers in
    network order (the order the monitor logged them)."""
    per: dict[str, dict[str, list[float]]] = {}
    for run in row.runs:
        for key, layers in (run_readings(run) or {}).items():
            for layer, value in layers.items():
                per.setdefault(key, {}).setdefault(layer, []).append(value)
    return {
        key: {layer: (*_mean_std(v), len(v)) for layer, v in layers.items()} for key, layers in per.items()
    }


def _layer_mean(row: Row, key: str) -> tuple[float, float | None, int] | None:
    """Mean over layers per run, then mean ± std over the row's seeds."""
    means = []
    for run in row.runs:
        layers = (run_readings(run) or {}).get(key)
        if layers:
            means.append(statistics.fmean(layers.values()))
    return (*_mean_std(means), len(means)) if means else None


def _cell(stat: tuple[float, float | None, int] | None) -> str:
    if stat is None:
        return "–"
    mean, std, _ = stat
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def readings_markdown(rows: list[Row], keys: list[str]) -> list[str]:
    """The report.md section (empty when no run has readings)."""
    shown = [row for row in rows if any(run_readings(r) for r in row.runs)]
    if not shown:
        return []
    labels = short_labels(shown, keys)
    lines = [
        "## Dormant units, four readings",
        "",
        "`snn-eval` on each run's best checkpoint over the test set (docs/method.md §8); each cell is"
        " the mean over the network's neuron layers, in %, mean ± std over seeds. Per layer:"
        " `dormant_readings.csv`, `dormant_readings.png`.",
        "",
        *(f"- **{name}**: {what}." for _, name, what in READINGS),
        "",
        "| # | " + " | ".join(name for _, name, _ in READINGS) + " | n |",
        "|---|" + "---|" * (len(READINGS) + 1),
    ]
    for row in shown:
        stats = [_layer_mean(row, key) for key, _, _ in READINGS]
        n = max((s[2] for s in stats if s is not None), default=0)
        lines.append(f"| {labels[row.number]} | " + " | ".join(map(_cell, stats)) + f" | {n} |")
    return [*lines, ""]


def readings_csv(rows: list[Row], keys: list[str]) -> list[list[str]]:
    """dormant_readings.csv: one line per (configuration, reading, layer); header only when empty."""
    header = {key: col for col, key in DEFINING}  # report.csv's column names
    out = [["row", *(header.get(k, k) for k in keys), "reading", "layer", "mean", "std", "n"]]
    for row in rows:
        for key, layers in row_readings(row).items():
            for layer, (mean, std, n) in layers.items():
                values = [format_value(row.values.get(k)) for k in keys]
                spread = "" if std is None else f"{std:.6g}"
                out.append([str(row.number), *values, key, layer, f"{mean:.6g}", spread, str(n)])
    return out
