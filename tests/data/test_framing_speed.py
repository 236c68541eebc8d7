"""The vectorised framing gives exactly the frames the tonic-based one gave, and the framing benchmark
(``snn-bench --framing``) runs and reports both side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlfsnn.bench import framing as bench_framing
from mlfsnn.data.events.aedat import EVENT_DTYPE, SENSOR
from mlfsnn.data.events.framing import FrameSpec, NoEventsError, frame_events


def _old_counts(bins: np.ndarray, ev: np.ndarray, spec: FrameSpec) -> np.ndarray:
    t, s = spec.time_steps, spec.size
    flat = ((bins * 2 + ev["p"].astype(np.int64)) * s + ev["y"]) * s + ev["x"]
    return np.bincount(flat, minlength=t * 2 * s * s).reshape(t, 2, s, s)


def _old_scale(events: np.ndarray, spec: FrameSpec) -> np.ndarray:
    from tonic.transforms import Downsample

    if spec.divisor is not None:
        lut = np.floor_divide(np.arange(SENSOR, dtype=np.float64), float(spec.divisor)).astype(np.int16)
        out = events.copy()
        out["x"], out["y"] = lut[events["x"]], lut[events["y"]]
        return out
    return events if spec.size == SENSOR else Downsample(spatial_factor=spec.size / SENSOR)(events)


def old_frame_events(events: np.ndarray, spec: FrameSpec, start: int | None = None) -> np.ndarray:
    """framing.frame_events as it was before the vectorised counting: tonic's Downsample + ToFrame."""
    from tonic.transforms import ToFrame

    t = events["t"]
    if start is None:
        if len(t) == 0:
            raise NoEventsError("no events")
        start = 0 if spec.window_origin == "absolute" else int(t[0])
    origin = start
    if spec.origin == "first_event":
        i = int(np.searchsorted(t, start))
        if i == len(t):
            raise NoEventsError("none after start")
        origin = int(t[i])
    if spec.framing == "paper":
        span = spec.time_steps * spec.bin_us
        end = start + span if spec.window_origin == "absolute" else origin + span
        if end <= origin:
            raise NoEventsError("window before the first event")
        lo, hi = np.searchsorted(t, [origin, end])
        ev = _old_scale(events[lo:hi], spec)
        if len(ev) == 0:
            raise NoEventsError("empty window")
        to_frame = ToFrame(
            sensor_size=(spec.size, spec.size, 2),
            time_window=spec.bin_us,
            start_time=origin,
            end_time=origin + span,
        )
        frames = np.asarray(to_frame(ev)).astype(np.int64)
        if frames.shape != spec.shape or frames.min() < 0 or int(frames.sum()) != len(ev):
            frames = _old_counts((ev["t"] - origin) // spec.bin_us, ev, spec)
    else:
        ev = _old_scale(events[np.searchsorted(t, origin) :], spec)
        n, steps = len(ev), spec.time_steps
        if n == 0:
            raise NoEventsError("none after the origin")
        if spec.uniform_split == "number":
            bins = np.arange(n, dtype=np.int64) // max(n // steps, 1)
        else:
            width = (int(ev["t"][-1]) - origin) // steps
            bins = (ev["t"] - origin) // width if width > 0 else np.zeros(n, np.int64)
        frames = _old_counts(np.minimum(bins, steps - 1), ev, spec)
    return np.ascontiguousarray(frames.swapaxes(-1, -2)) if spec.transpose else frames


def _events(rng: np.random.Generator, n: int, span: int) -> np.ndarray:
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"] = rng.integers(0, SENSOR, n), rng.integers(0, SENSOR, n)
    ev["p"] = rng.integers(0, 2, n).astype(bool)
    ev["t"] = np.sort(rng.integers(0, span, n)) + int(rng.integers(0, 3)) * 1_000_000
    return ev


def _spec(rng: np.random.Generator) -> FrameSpec:
    size, divisor = [(128, None), (64, None), (48, None), (32, None), (16, None), (42, 3.04), (43, 3.0)][
        int(rng.integers(0, 7))
    ]
    framing = "paper" if rng.random() < 0.6 else "uniform"
    origin = "first_event" if rng.random() < 0.7 else "start"
    absolute = framing == "paper" and origin == "first_event" and rng.random() < 0.3
    return FrameSpec(
        time_steps=int(rng.integers(1, 13)),
        framing=framing,
        bin_us=int(rng.choice([1, 7, 1000, 30_000])),
        size=size,
        divisor=divisor,
        origin=origin,
        uniform_split="time" if rng.random() < 0.5 else "number",
        transpose=bool(rng.random() < 0.3),
        window_origin="absolute" if absolute else "first_event",
    )


def _both(events: np.ndarray, spec: FrameSpec, start: int | None) -> tuple[object, object]:
    out = []
    for fn in (frame_events, old_frame_events):
        try:
            out.append(fn(events, spec, start))
        except NoEventsError:
            out.append(NoEventsError)
    return out[0], out[1]


def test_vectorised_framing_equals_the_tonic_based_one() -> None:
    rng = np.random.default_rng(2026)
    for _ in range(400):
        n = int(rng.choice([0, 1, 2, 17, 500, 3000]))
        ev = _events(rng, n, int(rng.choice([1, 50, 200_000, 2_000_000])))
        spec = _spec(rng)
        start = (
            None
            if rng.random() < 0.5 or n == 0
            else int(ev["t"][int(rng.integers(0, n))]) - int(rng.integers(0, 100))
        )
        new, old = _both(ev, spec, start)
        if old is NoEventsError:
            assert new is NoEventsError, (spec, start)
            continue
        assert isinstance(new, np.ndarray) and new.dtype == np.int64 and new.flags.c_contiguous
        np.testing.assert_array_equal(new, old, err_msg=str((spec, start, n)))


@pytest.mark.parametrize(
    "spec",
    [
        FrameSpec(time_steps=2, bin_us=10, size=32),
        FrameSpec(time_steps=2, framing="uniform", size=128, transpose=True),
    ],
)
def test_cells_above_int16_match_too(spec: FrameSpec) -> None:
    ev = np.zeros(70_000, dtype=EVENT_DTYPE)  # one pixel, one instant: 70000 > 32767 in one cell
    ev["x"], ev["y"] = 5, 9
    new, old = _both(ev, spec, None)
    np.testing.assert_array_equal(new, old)
    assert int(np.asarray(new).max()) == 70_000


def test_the_benchmark_dtype_is_the_readers() -> None:
    assert bench_framing.EVENT_DTYPE == EVENT_DTYPE


def test_framing_benchmark_reports_both_side_by_side(tmp_path: Path) -> None:
    from mlfsnn.cli.bench import main

    assert main(["--framing", "--skip-neuron", "--skip-train", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())["framing"]
    rows = {r["case"]: r for r in result["rows"]}
    assert list(rows) == list(bench_framing.CASES) and all(r["events"] == 20_000 for r in rows.values())
    assert rows["paper 128"]["equal_frames"] is True and rows["paper 32"]["equal_frames"] is True
    assert rows["uniform 128"]["equal_frames"] is None
    for r in rows.values():
        assert r["mlfsnn_events_per_s"] > 0 and r["tonic_events_per_s"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "## Event framing" in md and "| paper 32 | 20,000 |" in md and "tonic 1." in md
