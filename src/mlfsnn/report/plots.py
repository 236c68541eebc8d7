"""snn-report's PNG plots: accuracy curves, accuracy against depth and against K (one line per
variant), per-layer firing rate and dormant ratio (one line per variant).

Depth and K plots show the test accuracy at the best-val epoch when a run has a val split, else the
paper's best-test convention, and say which on the axis.

Each plot is skipped, with a reason the report prints, when the runs hold no data for it. Plots are
drawn into memory (PNG bytes); :func:`mlfsnn.report.report` writes them with the tables, as one set
(:mod:`.writing`), so a failed write never leaves a cut PNG or a link target overwritten. Figures are
built with the object-oriented matplotlib API on the Agg canvas, so no display and no pyplot global
state are involved (the report may run inside a test process or on a headless node).

matplotlib is imported at the top here because :func:`mlfsnn.report.report` imports this module only
when it draws: reading runs and writing tables never pay for it.
"""

from __future__ import annotations

import io
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .dormant import READINGS, row_readings
from .runs import DEFINING, Row, accuracy_curve, any_val, canon, layer_stats
from .tables import format_value, short_labels

__all__ = ["Plot", "make_plots", "short_layer", "variant_label"]

# A fixed figure DPI and size keep the files small and their layout the same on every machine.
_DPI = 110
_BLOCK_NAMES = {"ds": "DS", "plain": "plain"}
_COLUMN = {key: col for col, key in DEFINING}
Point = tuple[Any, float, float | None]  # x (depth or K), mean over seeds, std (None: one seed)


@dataclass
class Plot:
    """One plot of the report: drawn (``path``, ``data``) or skipped, with the reason the report prints."""

    name: str  # file name in the output folder
    title: str
    path: Path | None = None  # None: skipped
    reason: str = ""
    data: bytes = b""  # the PNG, not yet written: the report writes it with the tables


def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    return Figure(figsize=(width, height), dpi=_DPI)


Sink = IO[bytes]  # where a plot function puts its PNG (an io.BytesIO in make_plots)


def _save(fig: Figure, ax: Axes, sink: Sink, legend: bool = True) -> None:
    if legend:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, alpha=0.3)
    fig.savefig(sink, format="png", bbox_inches="tight", metadata={"Software": None})


def _style(i: int) -> str:
    # The default colour cycle repeats after 10 series; a new line style keeps later ones distinct.
    return ("-", "--", ":", "-.")[i // 10 % 4]


def plot_curves(rows: list[Row], keys: list[str], sink: Sink) -> str | None:
    """Test accuracy per epoch, one line per row with a mean ± std band; the skip reason, or None."""
    curves = {row.number: accuracy_curve(row) for row in rows}
    if not any(curves.values()):
        return "no evaluated epochs"
    fig = _figure()
    ax = fig.add_subplot()
    _curves(ax, rows, curves, short_labels(rows, keys))
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (mean ± std over seeds)")
    _save(fig, ax, sink)
    return None


def plot_training_curves(rows: list[Row], keys: list[str], sink: Sink) -> str | None:
    """Training (left) and test (right) accuracy per epoch, one line per row: the figure of a depth
    claim, where a deeper net that fits its training set worse is degradation, not over-fitting."""
    train = {row.number: accuracy_curve(row, train=True) for row in rows}
    test = {row.number: accuracy_curve(row) for row in rows}
    if not any(train.values()):
        return "no epochs with a training accuracy"
    labels = _labels(rows, keys, skip=())
    named = {row.number: label for row, label in zip(rows, labels, strict=True)}
    fig = _figure(12.0, 4.5)
    left, right = fig.subplots(1, 2, sharey=True)
    _curves(left, rows, train, named)
    _curves(right, rows, test, named)
    left.set(xlabel="epoch", ylabel="accuracy (%)", title="Training accuracy (last epoch's running mean)")
    right.set(xlabel="epoch", title="Test accuracy")
    left.grid(True, alpha=0.3)
    _save(fig, right if any(test.values()) else left, sink)
    return None


def _curves(ax: Axes, rows: list[Row], curves: dict[int, list[Any]], labels: dict[int, str]) -> None:
    """One line per row with a curve, a mean ± std band where there are seeds."""
    for i, row in enumerate(r for r in rows if curves[r.number]):
        points = curves[row.number]
        epochs = [p[0] for p in points]
        means = [p[1] for p in points]
        marker = "o" if len(points) < 30 else None
        (line,) = ax.plot(epochs, means, _style(i), marker=marker, ms=3, label=labels[row.number])
        lo = [m - (s or 0.0) for _, m, s in points]
        hi = [m + (s or 0.0) for _, m, s in points]
        if any(s for _, _, s in points):
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric(rows: list[Row]) -> tuple[str, str]:
    """(Run attribute, axis text) of the accuracy the summary plots show: selected on val when a run
    has a val split, else the paper's best-test convention, named as such because it is optimistic."""
    if any_val(rows):
        return "test_at_best_val", "test accuracy at best-val epoch (%)"
    return "best_acc", "best test accuracy, paper conv. (%)"


def variant_label(values: dict[str, Any], extra: list[str], skip: tuple[str, ...] = ()) -> str:
    """The paper's name for a variant, ``MLF (K=3), DS``, then ``key=value`` for each key of ``extra``."""
    parts = []
    levels, block = values.get("neuron.levels"), values.get("model.block")
    if "neuron.levels" not in skip and levels is not None:
        parts.append(f"{'LIF' if levels == 1 else 'MLF'} (K={format_value(levels)})")  # K=1 is LIF
    if "model.block" not in skip and block is not None:
        parts.append(_BLOCK_NAMES.get(str(block), str(block)))
    parts += [f"{_COLUMN.get(k, k)}={format_value(values.get(k))}" for k in extra]
    return ", ".join(parts) or "all runs"


def _labels(rows: list[Row], keys: list[str], skip: tuple[str, ...]) -> list[str]:
    """A variant label per row; beyond K and block it names only the keys that differ between rows."""
    named = ("neuron.levels", "model.block", *skip)
    extra = [k for k in keys if k not in named and len({canon(r.values.get(k)) for r in rows}) > 1]
    return [variant_label(r.values, extra, skip) for r in rows]


def _sweep(rows: list[Row], keys: list[str], x_key: str, attr: str) -> list[tuple[Row, list[Point]]]:
    """Rows grouped by every key but ``x_key``, as (first row, points in x order); only groups in which
    x takes two or more values, since one point shows no trend."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(canon([row.values.get(k) for k in keys if k != x_key]), []).append(row)
    series = []
    for members in groups.values():
        points = [(r.values.get(x_key), *r.stat(attr)[:2]) for r in members]
        points = sorted((p for p in points if _number(p[0]) and p[1] is not None), key=lambda p: p[0])
        if len(points) > 1:  # the group's rows differ in x alone, so their x values are distinct
            series.append((members[0], points))
    return series


def _band(ax: Axes, xs: list[Any], points: list[tuple[float, float | None]], **kw: Any) -> None:
    """Line with markers at the means and a shaded ± std band; no band where every std is None
    (a single seed has no spread)."""
    means = [m for m, _ in points]
    (line,) = ax.plot(xs, means, marker="o", **kw)
    if any(s is not None for _, s in points):
        lo = [m - (s or 0.0) for m, s in points]
        hi = [m + (s or 0.0) for m, s in points]
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)


def _plot_sweep(
    series: list[tuple[Row, list[Point]]], labels: list[str], axes: tuple[str, str, str], sink: Sink
) -> None:
    xlabel, ylabel, title = axes
    fig = _figure()
    ax = fig.add_subplot()
    for i, ((_, points), label) in enumerate(zip(series, labels, strict=True)):
        _band(ax, [p[0] for p in points], [p[1:] for p in points], ls=_style(i), ms=4, label=label)
    ticks = sorted({p[0] for _, points in series for p in points})
    ax.set_xticks(ticks, [format_value(t) for t in ticks])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _save(fig, ax, sink)


def _plot_against(
    rows: list[Row], keys: list[str], key: str, xlabel: str, name: str, sink: Sink
) -> str | None:
    """Accuracy against config ``key``, one line per other varying key, mean ± std over seeds."""
    attr, ylabel = _metric(rows)
    series = _sweep(rows, keys, key, attr)
    if not series:
        return f"{name} does not vary with all other keys equal"
    labels = _labels([s[0] for s in series], keys, skip=(key,))
    title = f"Accuracy against {name.split(' (')[0]} (mean ± std over seeds)"
    _plot_sweep(series, labels, (xlabel, ylabel, title), sink)
    return None


def plot_depth(rows: list[Row], keys: list[str], sink: Sink) -> str | None:
    """Accuracy against depth, one line per variant (all other keys equal), mean ± std over seeds;
    beside it the training error against depth (degradation: a deeper net fits its training set
    worse), when the runs recorded a training accuracy."""
    attr, ylabel = _metric(rows)
    key = "model.depth"
    series = _sweep(rows, keys, key, attr)
    if not series:
        return "depth does not vary with all other keys equal"
    labels = _labels([s[0] for s in series], keys, skip=(key,))
    train = _sweep(rows, keys, key, "final_train_acc")
    fig = _figure(12.0 if train else 7.0, 4.5)
    axes = fig.subplots(1, 2) if train else [fig.add_subplot()]
    for i, ((_, points), label) in enumerate(zip(series, labels, strict=True)):
        _band(axes[0], [p[0] for p in points], [p[1:] for p in points], ls=_style(i), ms=4, label=label)
    axes[0].set(xlabel="network depth (layers)", ylabel=ylabel, title="Accuracy against depth (mean ± std)")
    if train:
        order = {id(first): i for i, (first, _) in enumerate(series)}
        for first, points in train:
            i = order.get(id(first), len(order))
            err = [(100.0 - m, sd) for _, m, sd in points]
            label = labels[i] if i < len(labels) else None
            _band(axes[1], [p[0] for p in points], err, ls=_style(i), ms=4, color=f"C{i % 10}", label=label)
        axes[1].set(xlabel="network depth (layers)", ylabel="training error (%), last epoch",
                    title="Training error against depth")  # fmt: skip
        axes[1].grid(True, alpha=0.3)
    ticks = sorted({p[0] for _, points in series for p in points})
    for ax in axes:
        ax.set_xticks(ticks, [format_value(t) for t in ticks])
    axes[0].grid(True, alpha=0.3)
    _save(fig, axes[-1], sink)
    return None


def plot_levels(rows: list[Row], keys: list[str], sink: Sink) -> str | None:
    """Accuracy against K, one line per block type (and any other varying key), mean ± std."""
    return _plot_against(rows, keys, "neuron.levels", "K, MLF levels (K=1: LIF)", "K (neuron.levels)", sink)


def short_layer(name: str) -> str:
    """``sn1`` -> ``stem``, ``layer2.0.sn1`` -> ``2.0.sn1``, ``layer2.0.shortcut.2`` -> ``2.0.sc``."""
    if name == "sn1":
        return "stem"
    name = re.sub(r"^layer(\d+)\.", r"\1.", name)
    return re.sub(r"\.shortcut(\.\d+)?$", ".sc", name)


def _merge_orders(orders: list[list[str]]) -> list[str]:
    """Every layer once, each list's order kept: DS blocks have shortcut neurons plain ones lack."""
    merged: list[str] = []
    for order in orders:
        at = 0
        for name in order:
            if name in merged:
                at = merged.index(name) + 1
            else:
                merged.insert(at, name)
                at += 1
    return merged


def _layer_depth(rows: list[Row]) -> Any:
    """The depth to compare layers at: the one most variants have, the deepest on a tie. Layers of
    different depths do not line up, and dormancy is the deep networks' problem."""
    counts: dict[str, list[Any]] = {}
    for row in rows:
        depth = row.values.get("model.depth")
        counts.setdefault(canon(depth), [depth, 0])[1] += 1
    best = max(counts.values(), key=lambda c: (c[1], _number(c[0]), c[0] if _number(c[0]) else 0))
    return best[0]


def plot_layers(rows: list[Row], keys: list[str], key: str, sink: Sink) -> str | None:
    """``key`` (firing_rate or dormant_ratio) per layer in network order, one line per variant at one
    depth: mean ± std over seeds at the last evaluated epoch."""
    stats = {row.number: layer_stats(row, key) for row in rows}
    rows = [row for row in rows if stats[row.number]]
    if not rows:
        return f"no {key} in the runs"
    depth = _layer_depth(rows)
    rows = [row for row in rows if canon(row.values.get("model.depth")) == canon(depth)]
    layers = _merge_orders([list(stats[row.number]) for row in rows])
    fig = _figure(width=min(12.0, max(7.0, 0.15 * len(layers) + 4.0)))
    ax = fig.add_subplot()
    _layer_lines(ax, rows, keys, stats, layers)
    what = "firing rate (spikes per neuron per step)" if key == "firing_rate" else "dormant ratio (fraction)"
    where = f", depth {format_value(depth)}" if depth is not None else ""
    ax.set(ylabel=what, title=f"{what.split(' (')[0].capitalize()} per layer{where} (mean ± std over seeds)")
    _save(fig, ax, sink)
    return None


def _layer_lines(
    ax: Axes, rows: list[Row], keys: list[str], stats: dict[int, dict], layers: list[str]
) -> None:
    """One line per row over ``layers`` (network order) from ``stats[row.number]``: {layer: (mean, std)}."""
    labels = _labels(rows, keys, skip=("model.depth",))
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        named = stats[row.number]
        xs = [layers.index(name) for name in named]
        _band(ax, xs, [v[:2] for v in named.values()], ls=_style(i), ms=3, label=label)
    step = math.ceil(len(layers) / 40)  # beyond ~40 names the labels overlap: name every step-th
    ticks = list(range(0, len(layers), step))
    ax.set_xticks(ticks, [short_layer(layers[t]) for t in ticks], rotation=90, fontsize="x-small")
    ax.set_xlabel("layer in network order (stem, then stage.block.neuron; sc = shortcut)")
    ax.set_ylim(bottom=0)


def plot_dormant_readings(rows: list[Row], keys: list[str], sink: Sink) -> str | None:
    """The four readings of :mod:`.dormant` per layer, one panel each, one line per variant at one depth."""
    readings = {row.number: row_readings(row) for row in rows}
    rows = [row for row in rows if readings[row.number]]
    if not rows:
        return "no run has dormant readings; snn-eval checkpoint=RUN_DIR writes them to eval.json"
    depth = _layer_depth(rows)
    rows = [row for row in rows if canon(row.values.get("model.depth")) == canon(depth)]
    layers = _merge_orders([list(layers) for row in rows for layers in readings[row.number].values()])
    fig = _figure(width=min(16.0, max(10.0, 0.25 * len(layers) + 6.0)), height=8.0)
    axes = fig.subplots(2, 2, sharex=True).flat
    for ax, (key, name, what) in zip(axes, READINGS, strict=True):
        stats = {row.number: readings[row.number].get(key, {}) for row in rows}
        _layer_lines(ax, rows, keys, stats, layers)
        ax.set(ylabel="fraction", title=f"{name}: {what}")
        ax.title.set_fontsize("small")
    where = f", depth {format_value(depth)}" if depth is not None else ""
    fig.suptitle(f"Dormant units per layer, four readings{where} (snn-eval, test set; mean ± std over seeds)")
    handles, labels = next(iter(fig.axes)).get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(sink, format="png", metadata={"Software": None})
    return None


def make_plots(rows: list[Row], keys: list[str], out: Path) -> list[Plot]:
    """Draw every plot that has data, into memory; returns what was drawn (``path`` in ``out`` and
    ``data``, for the caller to write) and what was skipped. Nothing is written or removed here."""
    what = "test @ best val" if any_val(rows) else "best test, paper conv."
    plots: list[tuple[Plot, Callable[[Sink], str | None]]] = [
        (Plot("accuracy_curves.png", "test accuracy per epoch"), lambda p: plot_curves(rows, keys, p)),
        (
            Plot("training_curves.png", "training and test accuracy per epoch, one line per row"),
            lambda p: plot_training_curves(rows, keys, p),
        ),
        (
            Plot("accuracy_vs_depth.png", f"accuracy against depth ({what})"),
            lambda p: plot_depth(rows, keys, p),
        ),
        (
            Plot("accuracy_vs_levels.png", f"accuracy against K ({what})"),
            lambda p: plot_levels(rows, keys, p),
        ),
        (
            Plot("firing_rate.png", "per-layer firing rate per variant"),
            lambda p: plot_layers(rows, keys, "firing_rate", p),
        ),
        (
            Plot("dormant_ratio.png", "per-layer dormant ratio per variant"),
            lambda p: plot_layers(rows, keys, "dormant_ratio", p),
        ),
    ]
    if any(row_readings(row) for row in rows):  # only runs snn-eval has measured have them
        plots.append(
            (
                Plot("dormant_readings.png", "per-layer dormant units in four readings (snn-eval)"),
                lambda p: plot_dormant_readings(rows, keys, p),
            )
        )
    for plot, draw in plots:
        sink = io.BytesIO()
        reason = "no runs with a configuration" if not rows else _draw(draw, plot.name, sink)
        if reason is None:
            plot.path, plot.data = out / plot.name, sink.getvalue()
        else:
            plot.reason = reason
    return [plot for plot, _ in plots]


def _draw(draw: Callable[[Sink], str | None], name: str, sink: Sink) -> str | None:
    # Odd data in one run must not cost the tables and the other plots; the reason says what broke.
    try:
        return draw(sink)
    except Exception as exc:
        print(f"warning: {name} not drawn ({type(exc).__name__}: {exc})", file=sys.stderr)
        return f"drawing failed: {type(exc).__name__}"
