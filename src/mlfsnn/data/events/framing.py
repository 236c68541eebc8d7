"""Event streams -> ``[T, 2, H, W]`` count frames, as the paper's protocols define them.

Two framings:

* ``paper``: ``T`` bins of ``bin_us`` from an origin (the first event of the sample, as in the
  release, or the sample's nominal start). Bin ``i`` holds the events with
  ``origin + i*bin_us <= t < origin + (i+1)*bin_us``; later events are not used.
  ``window_origin="absolute"`` (CIFAR10-DVS's release) also drops every event at or after
  ``start + T*bin_us``, the window measured from the sample's nominal start (a whole recording's:
  its timestamp 0) instead of from the first event; the bins still count from the first event.
  These are the bins of tonic's ``ToFrame(time_window, start_time, end_time)`` (checked in the
  tests), counted here (see "Counting").
* ``uniform``: the whole sample in ``T`` bins, of equal duration (``time``) or equal event count
  (``number``), the remainder going to the last bin as SpikingJelly does. tonic's
  ``n_time_bins`` / ``n_event_bins`` slicers drop that remainder (including the sample's last
  event), so this is computed here.

Space: with ``divisor`` null, coordinates are scaled by ``size / 128`` as tonic's ``Downsample``
does (exact: the factor is a power-of-two fraction, so ``floor(x * size / 128)``; 32 = 4x4 sum
pooling). With ``divisor`` set, pixel ``x`` goes to ``x // divisor`` computed in float64 like the
release's ``x // 3.04``; tonic's ``Downsample(spatial_factor=1/3.04)`` differs from it (pixel 76 ->
25, not 24).

Counting: the events are time-sorted, so every bin is a contiguous slice (found by binary search)
and one ``np.bincount`` per bin counts it, through a lookup table from the raw sensor address to the
cell (scaling and ``transpose`` folded in). The counts are those tonic's ``Downsample`` +
``ToFrame(time_window, start_time, end_time)`` gave (this module used them before;
tests/data/test_framing_speed.py holds the two equal), about ten times faster: ``ToFrame`` copies
every slice and accumulates with ``np.add.at`` into int16 (which had to be checked for wrap-around),
``Downsample`` copies the whole recording (docs/performance.md, "Event framing").
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...errors import DataError
from .aedat import SENSOR

__all__ = ["FrameSpec", "NoEventsError", "frame_events", "spec_from_cfg"]

FRAMINGS = ("paper", "uniform")
ORIGINS = ("first_event", "start")
WINDOW_ORIGINS = ("first_event", "absolute")
UNIFORM_SPLITS = ("time", "number")


class NoEventsError(ValueError):
    """The sample has no event in its framing window (an empty sample is never cached)."""


@dataclass(frozen=True)
class FrameSpec:
    """Every parameter that changes the frames of one sample (it is part of the cache key)."""

    time_steps: int
    framing: str = "paper"
    bin_us: int = 30_000
    size: int = 32
    divisor: float | None = None
    origin: str = "first_event"
    uniform_split: str = "time"
    transpose: bool = False  # frames indexed [p, x, y] (the release's CIFAR10-DVS layout)
    # where the T*bin window is measured from: the first event (the bins' origin), or "absolute":
    # the sample's nominal start (a whole recording's timestamp 0), bins still from the first event
    window_origin: str = "first_event"

    def __post_init__(self) -> None:
        if self.time_steps < 1:
            raise DataError(f"time_steps must be >= 1, got {self.time_steps}")
        if self.framing not in FRAMINGS:
            raise DataError(f"dataset.framing: {self.framing!r} is not one of {', '.join(FRAMINGS)}")
        if self.origin not in ORIGINS:
            raise DataError(f"dataset.origin: {self.origin!r} is not one of {', '.join(ORIGINS)}")
        if self.window_origin not in WINDOW_ORIGINS:
            raise DataError(
                f"dataset.window_origin: {self.window_origin!r} is not one of {', '.join(WINDOW_ORIGINS)}"
            )
        if self.window_origin == "absolute" and (self.framing, self.origin) != ("paper", "first_event"):
            raise DataError(
                "dataset.window_origin=absolute (the release's cut at absolute t < T*bin, bins from the "
                f"first event) needs dataset.framing=paper and dataset.origin=first_event, got "
                f"framing={self.framing}, origin={self.origin}"
            )
        if self.uniform_split not in UNIFORM_SPLITS:
            raise DataError(
                f"dataset.uniform_split: {self.uniform_split!r} is not one of {', '.join(UNIFORM_SPLITS)}"
            )
        if self.framing == "paper" and self.bin_us < 1:
            raise DataError(f"dataset.bin_ms must give at least 1 us per bin, got {self.bin_us} us")
        if not 1 <= self.size <= SENSOR:
            raise DataError(f"dataset.size must be in 1..{SENSOR}, got {self.size}")
        if self.divisor is not None:
            bins = int(_divisor_lut(self.divisor).max()) + 1
            if bins != self.size:
                raise DataError(
                    f"dataset.divisor={self.divisor} maps {SENSOR} pixels to {bins} bins, but "
                    f"dataset.size={self.size}; set dataset.size={bins}, or dataset.divisor=null "
                    f"to scale by size/{SENSOR}"
                )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.time_steps, 2, self.size, self.size)

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        if self.window_origin == "first_event":
            d.pop("window_origin")  # the keys of entries made before the option existed stay valid
        if self.framing == "uniform":
            d.pop("bin_us")
        else:
            d.pop("uniform_split")
        return d


def _divisor_lut(divisor: float) -> np.ndarray:
    if divisor <= 0:
        raise DataError(f"dataset.divisor must be > 0, got {divisor}")
    return np.floor_divide(np.arange(SENSOR, dtype=np.float64), float(divisor)).astype(np.int16)


@functools.lru_cache(maxsize=16)
def _cell_lut(size: int, divisor: float | None, transpose: bool) -> np.ndarray | None:
    """The cell of one bin's ``[2, size, size]`` (``[p, y, x]``, or ``[p, x, y]`` transposed) for
    every raw address ``(p * 128 + y) * 128 + x``; None where the address is the cell (full size)."""
    if size == SENSOR and divisor is None and not transpose:
        return None
    pixels = np.arange(SENSOR, dtype=np.intp)
    # divisor null: floor(x * size / 128) in integers, what Downsample's float product gives exactly
    scaled = (pixels * size) // SENSOR if divisor is None else _divisor_lut(divisor).astype(np.intp)
    p, y, x = np.meshgrid(np.arange(2), scaled, scaled, indexing="ij")
    rows, cols = (x, y) if transpose else (y, x)
    lut = ((p * size + rows) * size + cols).ravel()
    lut.flags.writeable = False  # shared by every call with these parameters
    return lut


def _count(ev: np.ndarray, bounds: list[int], spec: FrameSpec) -> np.ndarray:
    """Exact int64 counts ``[T, 2, size, size]``; bin ``i`` holds ``ev[bounds[i]:bounds[i + 1]]``."""
    t, s = spec.time_steps, spec.size
    cells = 2 * s * s
    address = ev["p"].astype(np.intp)
    address *= SENSOR
    address += ev["y"]
    address *= SENSOR
    address += ev["x"]
    lut = _cell_lut(s, spec.divisor, spec.transpose)
    index = address if lut is None else lut[address]
    frames = np.empty((t, cells), dtype=np.int64)
    for i in range(t):
        frames[i] = np.bincount(index[bounds[i] : bounds[i + 1]], minlength=cells)
    return frames.reshape(t, 2, s, s)


def _paper(ev: np.ndarray, spec: FrameSpec, origin: int, end: int) -> np.ndarray:
    """The events in ``[origin, end)`` in ``T`` bins from ``origin`` (``end`` at most the last bin's end)."""
    t = ev["t"]
    lo, hi = (int(i) for i in np.searchsorted(t, [origin, end]))
    if hi == lo:
        raise NoEventsError(f"no events in [{origin}, {end}) us")
    inner = np.searchsorted(t[lo:hi], origin + spec.bin_us * np.arange(1, spec.time_steps))
    return _count(ev[lo:hi], [0, *inner.tolist(), hi - lo], spec)


def _uniform(ev: np.ndarray, spec: FrameSpec, origin: int) -> np.ndarray:
    ev = ev[np.searchsorted(ev["t"], origin) :]
    n, steps = len(ev), spec.time_steps
    if n == 0:
        raise NoEventsError(f"no events at or after {origin} us")
    if spec.uniform_split == "number":
        per_bin = max(n // steps, 1)
        inner = [min(i * per_bin, n) for i in range(1, steps)]
    else:
        width = (int(ev["t"][-1]) - origin) // steps
        if width > 0:
            inner = np.searchsorted(ev["t"], origin + width * np.arange(1, steps)).tolist()
        else:  # every event at the origin: all in the first bin
            inner = [n] * (steps - 1)
    # the remainder (events past the last full bin) goes to the last bin, as SpikingJelly does
    return _count(ev, [0, *inner, n], spec)


def frame_events(events: np.ndarray, spec: FrameSpec, start: int | None = None) -> np.ndarray:
    """Frames ``[T, 2, size, size]`` (int64 counts) of one sample's time-sorted events.

    ``start`` is the sample's nominal start (a label's start time; ``None`` = the first event, or
    with ``window_origin=absolute`` the recording's timestamp 0). Events before ``start`` are
    ignored. With ``origin=first_event`` time counts from the first event at or after ``start``.
    The paper framing's window ends ``T*bin_us`` after that origin, or with
    ``window_origin=absolute`` after ``start`` (the release's CIFAR10-DVS cut at absolute
    ``t < T*bin_us``). Raises :class:`NoEventsError` when nothing falls in the window.
    """
    t = events["t"]
    if start is None:
        if len(t) == 0:
            raise NoEventsError("no events")
        start = 0 if spec.window_origin == "absolute" else int(t[0])
    origin = start
    if spec.origin == "first_event":
        i = int(np.searchsorted(t, start))
        if i == len(t):
            raise NoEventsError(f"no events at or after {start} us")
        origin = int(t[i])
    if spec.framing == "paper":
        span = spec.time_steps * spec.bin_us
        end = start + span if spec.window_origin == "absolute" else origin + span
        if end <= origin:
            raise NoEventsError(f"no events in [{start}, {end}) us: the first is at {origin} us")
        frames = _paper(events, spec, origin, end)
    else:
        frames = _uniform(events, spec, origin)
    return frames


def spec_from_cfg(cfg: Any, time_steps: int) -> FrameSpec:
    """The :class:`FrameSpec` a composed ``dataset`` config asks for."""
    divisor = cfg.get("divisor")
    return FrameSpec(
        time_steps=int(time_steps),
        framing=str(cfg.get("framing", "paper")),
        bin_us=round(float(cfg.bin_ms) * 1000),
        size=int(cfg.size),
        divisor=None if divisor is None else float(divisor),
        origin=str(cfg.get("origin", "first_event")),
        uniform_split=str(cfg.get("uniform_split", "time")),
        transpose=bool(cfg.get("transpose", False)),
        window_origin=str(cfg.get("window_origin", "first_event")),
    )
