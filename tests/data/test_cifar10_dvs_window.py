"""CIFAR10-DVS's ``dataset.window_origin``: the release's absolute 100 ms cut against the window from
the first event, on a hand-placed AEDAT 2.0 recording whose first event is at 37 ms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from event_fixtures import write_cifar10_dvs
from mlfsnn.cli.data import compose
from mlfsnn.data import DataError, build_datasets
from mlfsnn.data.events.aedat import EVENT_DTYPE
from mlfsnn.data.events.framing import FrameSpec, NoEventsError, frame_events

# (x, y, t_us, p); T = 10 bins of 10 ms, t0 = 37 ms. Pixels go to floor(v / 3.04):
# 0 -> 0, 4 -> 1, 10 -> 3, 20 -> 6, 31 -> 10, 76 -> 24 (the release's float quirk), 127 -> 41.
# Frames are indexed [t, p, x, y] (dataset.transpose=true).
T0_37MS = [
    (10, 20, 37_000, 1),  # t0: bin 0
    (10, 20, 46_999, 1),  # bin 0 (t0 + 9.999 ms)
    (4, 4, 47_000, 0),  # bin 1
    (4, 10, 57_000, 1),  # bin 2
    (76, 76, 67_500, 0),  # bin 3
    (127, 127, 77_000, 1),  # bin 4
    (0, 0, 96_999, 0),  # bin 5 (t0 + 59.999 ms)
    (127, 0, 97_000, 1),  # bin 6
    (127, 0, 99_999, 1),  # bin 6: the last event before absolute 100 ms
    (0, 127, 100_000, 0),  # bin 6, but at absolute 100 ms: the release drops it
    (31, 31, 126_999, 1),  # bin 8
    (31, 31, 127_000, 1),  # bin 9
    (20, 4, 136_999, 0),  # bin 9: t0 + 99.999 ms
    (20, 4, 137_000, 0),  # t0 + 100 ms: outside both windows
    (5, 5, 250_000, 1),  # outside both windows
]


def release_frame() -> np.ndarray:
    """By hand: the events with t < 100 ms (absolute), in bins of 10 ms from t0 = 37 ms."""
    f = np.zeros((10, 2, 42, 42), dtype=np.int64)
    f[0, 1, 3, 6] = 2
    f[1, 0, 1, 1] = 1
    f[2, 1, 1, 3] = 1
    f[3, 0, 24, 24] = 1
    f[4, 1, 41, 41] = 1
    f[5, 0, 0, 0] = 1
    f[6, 1, 41, 0] = 2  # bins 7-9 stay empty: [100, 137) ms is past the cut
    return f


def first_event_frame() -> np.ndarray:
    """By hand: the events in [37, 137) ms, in bins of 10 ms from t0 = 37 ms."""
    f = release_frame()
    f[6, 0, 0, 41] = 1  # t = 100 ms
    f[8, 1, 10, 10] = 1
    f[9, 1, 10, 10] = 1
    f[9, 0, 6, 1] = 1
    return f


def build(tmp_path: Path, root: Path, *overrides: str):
    cfg = compose(
        [
            "dataset=cifar10_dvs",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"dataset.root={root}",
            "time_steps=10",
            "dataset.bin_ms=10",
            *overrides,
        ]
    )
    return build_datasets(cfg.dataset, cfg.time_steps)


def frame_of(info, sample_id: str) -> np.ndarray:
    entry = Path(info.extra["cache"])
    meta = json.loads((entry / "meta.json").read_text())
    ids = meta["splits"]["test"]["ids"]
    return np.load(entry / "test_frames.npy")[ids.index(sample_id)].astype(np.int64)


def test_cifar10_dvs_window_origin_absolute_is_the_release_cut(tmp_path) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10, events={("bird", 9): T0_37MS})
    sample = "bird/cifar10_bird_9.aedat"  # the last of its class in natural order: a test sample
    _, _, absolute = build(tmp_path, root, "dataset.window_origin=absolute")
    _, _, default = build(tmp_path, root)
    got_release, got_default = frame_of(absolute, sample), frame_of(default, sample)
    np.testing.assert_array_equal(got_release, release_frame())
    np.testing.assert_array_equal(got_default, first_event_frame())
    assert got_release.sum() == 9 and got_default.sum() == 13
    assert got_release[7:].sum() == 0 and not np.array_equal(got_release, got_default)
    # a different cache entry, recorded in its parameters and the run's data notes
    assert absolute.extra["cache"] != default.extra["cache"]
    assert absolute.extra["framing"]["window_origin"] == "absolute"
    assert "window_origin" not in default.extra["framing"]
    assert any("absolute t < 100 ms" in n for n in absolute.notes)
    # the explicit default is the default's entry: keys of existing settings are unchanged
    _, _, explicit = build(tmp_path, root, "dataset.window_origin=first_event")
    assert explicit.extra["cache"] == default.extra["cache"]


def test_cifar10_dvs_window_origin_invalid_values(tmp_path) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10)
    msg = r"^dataset\.window_origin: 'start' is not one of first_event, absolute$"
    with pytest.raises(DataError, match=msg):
        build(tmp_path, root, "dataset.window_origin=start")
    combined = r"^dataset\.window_origin=absolute .* needs dataset\.framing=paper and dataset\.origin="
    for other in ("dataset.origin=start", "dataset.framing=uniform"):
        with pytest.raises(DataError, match=combined):
            build(tmp_path, root, "dataset.window_origin=absolute", other)
    assert not (tmp_path / "cache" / "cifar10_dvs").exists()  # refused before anything was framed


def test_frame_spec_window_origin_key_and_empty_window() -> None:
    paper = {"time_steps": 10, "bin_us": 10_000, "size": 42, "divisor": 3.04, "transpose": True}
    # exactly the key the default made before the option existed
    assert FrameSpec(**paper).key() == {**paper, "framing": "paper", "origin": "first_event"}
    assert FrameSpec(**paper, window_origin="absolute").key()["window_origin"] == "absolute"
    late = np.array([(1, 1, 150_000, True), (2, 2, 160_000, False)], dtype=EVENT_DTYPE)
    assert frame_events(late, FrameSpec(**paper)).sum() == 2
    with pytest.raises(NoEventsError, match=r"no events in \[0, 100000\) us: the first is at 150000 us"):
        frame_events(late, FrameSpec(**paper, window_origin="absolute"))
