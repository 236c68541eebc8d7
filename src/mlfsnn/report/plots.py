"""snn-report's PNG plots: accuracy curves, accuracy against depth, per-layer firing and dormancy.

Each plot is skipped, with a reason the report prints, when the runs hold no data for it. Figures are
built with the object-oriented matplotlib API on the Agg canvas, so no display and no pyplot global
state are involved (the report may run inside a test process or on a headless node).

matplotlib is imported at the top here because :func:`mlfsnn.report.report` imports this module only
when it draws: reading runs and writing tables never pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .runs import Row, accuracy_curve, layer_means
from .tables import short_labels

__all__ = ["Plot", "make_plots"]

# A fixed figure DPI and size keep the files small and their layout the same on every machine.
_DPI = 100


@dataclass
class Plot:
    """One plot of the report: drawn (``path``) or skipped, with the reason the report prints."""

    name: str  # file name in the output folder
    title: str
    path: Path | None = None  # None: skipped
    reason: str = ""


def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    return Figure(figsize=(width, height), dpi=_DPI)


def _save(fig: Figure, ax: Axes, path: Path, legend: bool = True) -> None:
    if legend:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, alpha=0.3)
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})


def _style(i: int) -> str:
    # The default colour cycle repeats after 10 series; a new line style keeps later ones distinct.
    return ("-", "--", ":", "-.")[i // 10 % 4]


def plot_curves(rows: list[Row], keys: list[str], path: Path) -> str | None:
    """Test accuracy per epoch, one line per row with a mean ± std band; the skip reason, or None."""
    curves = {row.number: accuracy_curve(row) for row in rows}
    if not any(curves.values()):
        return "no evaluated epochs"
    labels = short_labels(rows, keys)
    fig = _figure()
    ax = fig.add_subplot()
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
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (mean ± std over seeds)")
    _save(fig, ax, path)
    return None


def plot_depth(rows: list[Row], keys: list[str], path: Path) -> str | None:
    """Best accuracy against depth, one series per variant that differs in nothing but depth."""
    variants: dict[tuple, list[Row]] = {}
    for row in rows:
        variant = tuple(repr(row.values.get(k)) for k in keys if k != "model.depth")
        variants.setdefault(variant, []).append(row)
    series = []
    for members in variants.values():
        points = sorted(
            (row.values["model.depth"], *row.stat("best_acc")[:2])
            for row in members
            if isinstance(row.values.get("model.depth"), int) and row.stat("best_acc")[0] is not None
        )
        if len({p[0] for p in points}) > 1:
            series.append((members[0], points))
    if not series:
        return "depth does not vary within any block x K variant"
    labels = short_labels([s[0] for s in series], keys, drop=("model.depth",))
    fig = _figure()
    ax = fig.add_subplot()
    for i, (first, points) in enumerate(series):
        label = labels[first.number].split(" ", 1)[-1] if " " in labels[first.number] else "runs"
        ax.errorbar(
            [p[0] for p in points],
            [p[1] for p in points],
            yerr=[p[2] or 0.0 for p in points],
            marker="o",
            capsize=3,
            linestyle=_style(i),
            label=label,
        )
    depths = sorted({p[0] for _, points in series for p in points})
    ax.set_xticks(depths)
    ax.set(xlabel="depth", ylabel="best test accuracy (%)", title="Accuracy against depth (mean ± std)")
    _save(fig, ax, path)
    return None


def plot_layers(rows: list[Row], keys: list[str], key: str, path: Path) -> str | None:
    """``key`` (firing_rate or dormant_ratio) per layer at the last evaluated epoch, one line per row."""
    series = {row.number: layer_means(row, key) for row in rows}
    series = {n: s for n, s in series.items() if s}
    if not series:
        return f"no {key} in the runs"
    labels = short_labels(rows, keys)
    layer_lists = {tuple(s) for s in series.values()}
    shared = next(iter(layer_lists)) if len(layer_lists) == 1 else None
    longest = max(len(s) for s in series.values())
    fig = _figure(width=max(7.0, 0.25 * longest + 3.0))
    ax = fig.add_subplot()
    for i, (number, stats) in enumerate(series.items()):
        ax.plot(range(len(stats)), list(stats.values()), _style(i), marker="o", ms=3, label=labels[number])
    if shared is not None:
        # One architecture: name the layers. Different depths cannot share names, so index them.
        ax.set_xticks(range(len(shared)), shared, rotation=90, fontsize="x-small")
        ax.set_xlabel("layer (network order)")
    else:
        ax.set_xlabel("layer index (network order)")
    what = "firing rate (spikes per neuron per step)" if key == "firing_rate" else "dormant ratio"
    ax.set(ylabel=what, title=f"Per-layer {what.split(' (')[0]}, last evaluated epoch (mean over seeds)")
    _save(fig, ax, path)
    return None


def make_plots(rows: list[Row], keys: list[str], out: Path) -> list[Plot]:
    """Draw every plot that has data into ``out``; returns what was drawn and what was skipped."""
    plots = [
        Plot("accuracy_curves.png", "test accuracy per epoch"),
        Plot("accuracy_vs_depth.png", "accuracy against depth"),
        Plot("firing_rate.png", "per-layer firing rate"),
        Plot("dormant_ratio.png", "per-layer dormant ratio"),
    ]
    draw = {
        "accuracy_curves.png": lambda p: plot_curves(rows, keys, p),
        "accuracy_vs_depth.png": lambda p: plot_depth(rows, keys, p),
        "firing_rate.png": lambda p: plot_layers(rows, keys, "firing_rate", p),
        "dormant_ratio.png": lambda p: plot_layers(rows, keys, "dormant_ratio", p),
    }
    for plot in plots:
        target = out / plot.name
        reason = "no runs with a configuration" if not rows else draw[plot.name](target)
        if reason is None:
            plot.path = target
        else:
            plot.reason = reason
            target.unlink(missing_ok=True)  # a stale plot from an earlier report would mislead
    return plots
