"""Event framing: mlfsnn's frame building next to tonic's ``ToFrame`` on the same events, one process.

Each case frames one synthetic DVS-Gesture-sized recording (128 x 128 sensor, 2 polarities, about
6 s, sorted timestamps, uniformly random addresses: the worst case for the caches) into ``T = 20``
frames, with mlfsnn's :func:`~mlfsnn.data.events.framing.frame_events` and with the tonic transforms
that compute the same thing:

* ``paper 128``: ``T`` bins of 300 ms, full resolution, against
  ``ToFrame(time_window, start_time, end_time)``;
* ``paper 32``: the same bins at 32 x 32 (4 x 4 sum pooling), against ``Downsample(1/4)`` then
  ``ToFrame``: the DVS-Gesture recipe;
* ``uniform 128``: the whole recording in ``T`` equal-duration bins, against
  ``ToFrame(n_time_bins=T)`` (which drops the remainder past the last full bin, mlfsnn keeps it in
  the last bin: the counts differ by those events).

mlfsnn's framing comes in as a :data:`Framer` (``snn-bench --framing`` passes
:func:`~mlfsnn.data.events.framing.frame_events`): the benchmarks sit below the data layer.

Both are timed interleaved (repeat r of each before repeat r+1, after one warm-up call each), so
load from other processes hits them alike; the median is reported as events per second, with
tonic's time over ours. For the ``paper`` cases the two outputs are compared cell by cell.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["CASES", "EVENT_DTYPE", "Framer", "framing_benchmark", "framing_markdown", "synthetic_recording"]

# mlfsnn.data.events.aedat.EVENT_DTYPE (tests/data/test_framing_speed.py checks they agree)
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])
# framer(framing, size, bin_us, time_steps) -> a function of the events giving [T, 2, size, size]
Framer = Callable[[str, int, int, int], Callable[[np.ndarray], np.ndarray]]

SENSOR = 128
T = 20
DURATION_US = 6_000_000  # a DVS-Gesture recording lasts about 6 s
EVENTS = (300_000, 1_000_000)
QUICK_EVENTS = (20_000,)
CASES = ("paper 128", "paper 32", "uniform 128")


def synthetic_recording(n: int, seed: int = 0, duration_us: int = DURATION_US) -> np.ndarray:
    """``n`` events in mlfsnn's event dtype: random addresses and polarities, sorted timestamps."""
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"] = rng.integers(0, SENSOR, n)
    ev["y"] = rng.integers(0, SENSOR, n)
    ev["p"] = rng.integers(0, 2, n).astype(bool)
    ev["t"] = np.sort(rng.integers(0, duration_us, n))
    return ev


def _pair(
    case: str, ev: np.ndarray, framer: Framer
) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """(mlfsnn, tonic) framing calls for ``case`` on ``ev``."""
    from tonic.transforms import Downsample, ToFrame

    framing, size = case.split()[0], int(case.split()[1])
    bin_us = DURATION_US // T
    frame = framer(framing, size, bin_us, T)
    if framing == "uniform":
        to_frame = ToFrame(sensor_size=(size, size, 2), n_time_bins=T)
        return (lambda: frame(ev)), (lambda: to_frame(ev))
    t0 = int(ev["t"][0])
    to_frame = ToFrame(
        sensor_size=(size, size, 2), time_window=bin_us, start_time=t0, end_time=t0 + T * bin_us
    )
    if size == SENSOR:
        return (lambda: frame(ev)), (lambda: to_frame(ev))
    down = Downsample(spatial_factor=size / SENSOR)
    return (lambda: frame(ev)), (lambda: to_frame(down(ev)))


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    for fn in fns.values():  # allocator, lookup tables, imports
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def framing_benchmark(framer: Framer, repeats: int = 7, quick: bool = False) -> dict[str, Any]:
    """One row per (case, events): median seconds and events/s of mlfsnn and tonic, and whether the
    two gave the same frames (``paper`` cases; None for ``uniform``, which differs by design)."""
    import tonic

    rows = []
    for n in QUICK_EVENTS if quick else EVENTS:
        ev = synthetic_recording(n)
        for case in CASES:
            ours, theirs = _pair(case, ev, framer)
            same = None
            if case.startswith("paper"):
                same = bool(np.array_equal(ours(), np.asarray(theirs()).astype(np.int64)))
            times = _interleaved({"mlfsnn": ours, "tonic": theirs}, repeats)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append(
                {
                    "case": case,
                    "events": n,
                    "T": T,
                    "mlfsnn_s": med["mlfsnn"],
                    "tonic_s": med["tonic"],
                    "mlfsnn_events_per_s": n / med["mlfsnn"],
                    "tonic_events_per_s": n / med["tonic"],
                    "speedup_vs_tonic": med["tonic"] / med["mlfsnn"],
                    "equal_frames": same,
                }
            )
    return {"numpy": np.__version__, "tonic": tonic.__version__, "repeats": repeats, "rows": rows}


def framing_markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        f"numpy {result['numpy']}, tonic {result['tonic']}; median of {result['repeats']} interleaved "
        f"calls; T = {T}, synthetic {SENSOR} x {SENSOR} recordings of {DURATION_US / 1e6:g} s",
        "",
        "| case | events | mlfsnn ms | mlfsnn Mevents/s | tonic ms | tonic Mevents/s | speed-up vs tonic "
        "| same frames |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        same = {True: "yes", False: "NO", None: "- (tonic drops the remainder)"}[r["equal_frames"]]
        lines.append(
            f"| {r['case']} | {r['events']:,} | {r['mlfsnn_s'] * 1e3:.1f} | "
            f"{r['mlfsnn_events_per_s'] / 1e6:.1f} | {r['tonic_s'] * 1e3:.1f} | "
            f"{r['tonic_events_per_s'] / 1e6:.1f} | {r['speedup_vs_tonic']:.1f}x | {same} |"
        )
    return lines
