"""Spike plots of one evaluation (``snn-eval checkpoint=RUN plots=true``): a raster of one test sample
and the firing rate per time step, every MLF layer in network order.

Inputs are plain arrays keyed by layer name (what :class:`mlfsnn.nn.observe.SpikeRecorder` records,
converted by the caller). Figures are built with the object-oriented matplotlib API on the Agg
canvas, like :mod:`.plots`: no display, no pyplot state. Every figure is drawn into memory first and
the files are then written as one set (:mod:`.writing`): a link planted at a name is replaced, never
written through, and a full disk leaves the previous plots whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .plots import short_layer
from .writing import png_bytes, write_together

__all__ = ["RASTER_NEURONS", "level_colors", "plot_raster", "plot_rates", "subsample", "write_spike_plots"]

RASTER_NEURONS = 64  # neurons drawn per layer: beyond this a panel's rows blur into each other
_PANELS = 24  # layers per raster figure (6 rows of 4); deeper nets get several files
_COLUMNS = 4
_DPI = 110


def subsample(count: int, limit: int = RASTER_NEURONS) -> np.ndarray:
    """``min(count, limit)`` evenly spaced indices into ``count`` neurons: no choice of "interesting"
    neurons, so a panel shows the layer's real share of silent ones."""
    return np.unique(np.linspace(0, count - 1, num=min(count, limit)).round().astype(int))


def level_colors(levels: int) -> list[tuple[float, float, float, float]]:
    """One colour per count 1..K, darker for more spikes (0, silence, is drawn white)."""
    cmap = colormaps["inferno_r"]
    return [cmap(x) for x in np.linspace(0.35, 0.9, levels)] if levels > 1 else [cmap(0.9)]


def _raster_panel(ax: Axes, name: str, counts: np.ndarray, levels: int) -> None:
    steps, neurons = counts.shape
    picked = subsample(neurons)
    colors = [(1.0, 1.0, 1.0, 1.0), *level_colors(levels)]
    ax.imshow(
        np.clip(counts[:, picked].T, 0, levels),
        cmap=ListedColormap(colors),
        vmin=-0.5,
        vmax=levels + 0.5,
        aspect="auto",
        interpolation="nearest",
        origin="lower",
        extent=(0.5, steps + 0.5, -0.5, len(picked) - 0.5),
    )
    ax.set_title(f"{short_layer(name)} ({len(picked)} of {neurons} neurons)", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(steps, 8)))
    rows = np.unique(np.linspace(0, len(picked) - 1, num=min(len(picked), 4)).round().astype(int))
    ax.set_yticks(rows, [str(picked[r]) for r in rows])  # label rows with the neurons' own indices
    ax.tick_params(labelsize="x-small")


def plot_raster(rasters: Mapping[str, np.ndarray], levels: int, title: str) -> bytes:
    """The PNG of one panel per layer: ``rasters[name]`` is ``[T, neurons]`` spike counts 0..``levels``."""
    names = list(rasters)
    rows = -(-len(names) // _COLUMNS)
    cols = min(_COLUMNS, len(names))
    fig = Figure(figsize=(3.2 * cols + 0.6, 2.3 * rows + 1.2), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        _raster_panel(ax, name, np.asarray(rasters[name], dtype=float), levels)
    for ax in axes.flat[len(names) :]:
        ax.set_axis_off()
    handles = [Patch(facecolor="white", edgecolor="0.6", label="0 (silent)")]
    handles += [
        Patch(color=c, label=f"{k} spike{'s' if k > 1 else ''}")
        for k, c in enumerate(level_colors(levels), 1)
    ]
    fig.legend(handles=handles, loc="outside right upper", title="spikes in\nthe time step")
    fig.suptitle(title)
    fig.supxlabel("time step")
    fig.supylabel("neuron index (evenly spaced subsample)")
    return png_bytes(fig, metadata={"Software": None})


def plot_rates(rates: Mapping[str, np.ndarray], title: str) -> bytes:
    """The PNG of one line per layer: ``rates[name]`` is ``[T]`` spikes per neuron per step; colour
    follows depth."""
    names = list(rates)
    fig = Figure(figsize=(8.5, 4.8), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    for i, name in enumerate(names):
        y = np.asarray(rates[name], dtype=float)
        color = cmap(i / max(len(names) - 1, 1))
        ax.plot(np.arange(1, len(y) + 1), y, "o-", ms=3, color=color, label=short_layer(name))
    ax.set(xlabel="time step", ylabel="firing rate (spikes / neuron / step)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.legend(
        title="layer (sc = shortcut)",
        title_fontsize="small",
        fontsize="x-small",
        loc="outside right upper",
        ncol=2 if len(names) > 24 else 1,
        frameon=False,
    )
    return png_bytes(fig, metadata={"Software": None})


def write_spike_plots(
    rasters: Mapping[str, np.ndarray],
    rates: Mapping[str, np.ndarray],
    levels: int,
    out_dir: Path,
    stem: str = "eval",
    sample: str = "test sample 0",
    samples: int | None = None,
) -> list[Path]:
    """Draw the raster(s) of ``sample`` and the per-step rates into ``out_dir``; returns the files.

    Files: ``<stem>_spike_raster.png`` (``_1``, ``_2``, ... past 24 layers) and
    ``<stem>_firing_rate_per_step.png``. ``samples`` (the number the rates average over) goes in the
    rate plot's title. A file that cannot be written raises :class:`~mlfsnn.errors.ReportError`
    (``cannot write <file>: <reason>``), the previous plots left as they were.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Path, bytes]] = []
    names = list(rasters)
    chunks: Sequence[list[str]] = [names[i : i + _PANELS] for i in range(0, len(names), _PANELS)]
    for i, chunk in enumerate(chunks, 1):
        suffix = f"_{i}" if len(chunks) > 1 else ""
        part = f", layers {(i - 1) * _PANELS + 1}-{(i - 1) * _PANELS + len(chunk)}" if len(chunks) > 1 else ""
        data = plot_raster({n: rasters[n] for n in chunk}, levels, f"Spike counts of {sample}{part}")
        files.append((out_dir / f"{stem}_spike_raster{suffix}.png", data))
    over = f" ({samples} test samples)" if samples else ""
    data = plot_rates(rates, f"Firing rate per time step{over}")
    files.append((out_dir / f"{stem}_firing_rate_per_step.png", data))
    write_together(files)
    return [path for path, _ in files]
