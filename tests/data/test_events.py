"""AEDAT readers, framing protocols and the frame cache, on synthetic files in the real formats."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from event_fixtures import (
    AEDAT31_HEADER,
    aedat2_bytes,
    aedat31_bytes,
    polarity_packet,
    reference_frames,
    special_packet,
)
from mlfsnn.data import DataError
from mlfsnn.data.events.aedat import (
    EVENT_DTYPE,
    CorruptFileError,
    read_aedat2_dvs128,
    read_aedat31_polarity,
)
from mlfsnn.data.events.cache import CachedFrames, CacheWriter, FrameTransform, load_meta
from mlfsnn.data.events.framing import FrameSpec, NoEventsError, frame_events

EVENTS = [(10, 20, 100, 1), (127, 0, 150, 0), (64, 100, 200, 1), (3, 4, 250, 0), (0, 127, 251, 1)]


def as_events(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    ev = np.empty(len(rows), dtype=EVENT_DTYPE)
    for i, (x, y, t, p) in enumerate(rows):
        ev[i] = (x, y, t, bool(p))
    return ev


def as_tuples(ev: np.ndarray) -> list[tuple[int, int, int, int]]:
    return [(int(e["x"]), int(e["y"]), int(e["t"]), int(e["p"])) for e in ev]


# --- AEDAT 3.1 ------------------------------------------------------------------------------------


def test_aedat31_keeps_polarity_packets_only() -> None:
    buf = aedat31_bytes(EVENTS, per_packet=2)  # special + IMU6 packets between the polarity packets
    assert as_tuples(read_aedat31_polarity(buf, "f.aedat")) == EVENTS


def test_aedat31_timestamp_overflow_and_lf_header() -> None:
    buf = AEDAT31_HEADER.replace(b"\r\n", b"\n") + polarity_packet(EVENTS[:2], ts_overflow=1)
    ev = read_aedat31_polarity(buf, "f.aedat")
    assert ev["t"].tolist() == [(1 << 31) + 100, (1 << 31) + 150]


@pytest.mark.parametrize("cut", [3, 9, 30])
def test_aedat31_truncated_is_an_error_naming_the_file(cut: int) -> None:
    buf = aedat31_bytes(EVENTS, per_packet=2, extra_packets=False)
    with pytest.raises(CorruptFileError, match=r"^user01_led\.aedat: truncated"):
        read_aedat31_polarity(buf[:-cut], "user01_led.aedat")


def test_aedat31_rejects_garbage_and_off_sensor_addresses() -> None:
    with pytest.raises(CorruptFileError, match="not an AEDAT file"):
        read_aedat31_polarity(b"\x00" * 64, "x.aedat")
    with pytest.raises(CorruptFileError, match="no '#!END-HEADER'"):
        read_aedat31_polarity(b"#!AER-DAT3.1\r\n#Format: RAW\r\n", "x.aedat")
    with pytest.raises(CorruptFileError, match="outside the 128x128 sensor"):
        read_aedat31_polarity(AEDAT31_HEADER + polarity_packet([(200, 3, 5, 1)]), "x.aedat")
    with pytest.raises(CorruptFileError, match="not in time order"):
        read_aedat31_polarity(AEDAT31_HEADER + polarity_packet([(1, 3, 9, 1), (1, 3, 5, 1)]), "x.aedat")
    bad_size = AEDAT31_HEADER + struct.pack("<hhiiiiii", 1, 1, 12, 4, 0, 1, 1, 1) + b"\0" * 12
    with pytest.raises(CorruptFileError, match="eventSize 12"):
        read_aedat31_polarity(bad_size, "x.aedat")


def test_tonic_1_7_aedat31_readers_are_wrong(tmp_path) -> None:
    """The evidence for aedat.py's own reader; if this fails, tonic changed: review aedat.py."""
    import tonic.io

    path = tmp_path / "user01_led.aedat"
    path.write_bytes(AEDAT31_HEADER + special_packet([50]) + polarity_packet(EVENTS))
    with pytest.raises(ValueError, match="too many values to unpack"):
        tonic.io.read_dvs_ibm(str(path))  # unpacks read_aedat_header_from_file's 3-tuple into 2 names
    version, start, _ = tonic.io.read_aedat_header_from_file(str(path))
    raw = tonic.io.get_aer_events_from_file(str(path), version, start)
    assert len(raw) == len(EVENTS) + 1  # the special event is decoded as a polarity event ...
    assert (raw["address"][0] >> 2) & 0x1FFF >= 128  # ... with an address off the sensor
    lf = tmp_path / "lf.aedat"
    lf.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    assert tonic.io.read_aedat_header_from_file(str(lf))[0] == 3.0  # "3.1\n" parsed as 3.0


def test_validate_events_sorts_third_party_copies_only_when_asked() -> None:
    from mlfsnn.data.events.aedat import validate_events

    ev = as_events([(1, 1, 9, 0), (2, 2, 5, 1)])
    assert validate_events(ev, "copy.npy", sort=True)["t"].tolist() == [5, 9]
    with pytest.raises(CorruptFileError, match="not in time order"):
        validate_events(ev, "copy.npy")


# --- AEDAT 2.0 ------------------------------------------------------------------------------------


def test_aedat2_decodes_like_the_release_and_agrees_with_tonic(tmp_path) -> None:
    import tonic.io

    buf = aedat2_bytes(EVENTS)
    assert as_tuples(read_aedat2_dvs128(buf, "c.aedat")) == EVENTS
    path = tmp_path / "c.aedat"
    path.write_bytes(buf)
    version, start, _ = tonic.io.read_aedat_header_from_file(str(path))
    raw = tonic.io.get_aer_events_from_file(str(path), version, start)
    addr = raw["address"].astype(np.int64)
    # the release: x = 127 - ((addr & 0xFE) >> 1), y = (addr & 0x7F00) >> 8, p = addr & 1
    release = zip(127 - ((addr & 0xFE) >> 1), (addr & 0x7F00) >> 8, raw["timeStamp"], addr & 1, strict=True)
    assert [tuple(int(v) for v in r) for r in release] == EVENTS


def test_aedat2_truncated_is_an_error_where_tonic_drops_the_tail(tmp_path) -> None:
    import tonic.io

    buf = aedat2_bytes(EVENTS)[:-3]
    with pytest.raises(CorruptFileError, match=r"^c\.aedat: truncated"):
        read_aedat2_dvs128(buf, "c.aedat")
    path = tmp_path / "c.aedat"
    path.write_bytes(buf)
    version, start, _ = tonic.io.read_aedat_header_from_file(str(path))
    assert len(tonic.io.get_aer_events_from_file(str(path), version, start)) == len(EVENTS) - 1
    with pytest.raises(CorruptFileError, match=r"expected AEDAT 2\.0"):
        read_aedat2_dvs128(aedat31_bytes(EVENTS), "c.aedat")


# --- framing --------------------------------------------------------------------------------------


def test_paper_framing_known_events() -> None:
    """Bins [origin + i*bin, origin + (i+1)*bin), polarity channels, 4x4 sum pooling."""
    rows = [
        (60, 60, 999, 1),  # before the start: not used
        (0, 0, 1005, 1),  # origin (first event at/after start=1000)
        (7, 5, 1005 + 999, 0),
        (4, 6, 1005 + 999, 0),  # same bin, same pooled pixel (1, 1)
        (8, 127, 1005 + 1000, 1),  # bin 1, row 31, col 2
        (127, 127, 1005 + 3999, 1),  # last bin
        (50, 50, 1005 + 4000, 1),
    ]  # one past the window: not used
    spec = FrameSpec(time_steps=4, bin_us=1000, size=32)
    f = frame_events(as_events(rows), spec, start=1000)
    assert f.shape == (4, 2, 32, 32) and f.sum() == 5
    assert f[0, 1, 0, 0] == 1 and f[0, 0, 1, 1] == 2 and f[1, 1, 31, 2] == 1 and f[3, 1, 31, 31] == 1
    spec = FrameSpec(time_steps=4, bin_us=1000, size=32, origin="start")
    g = frame_events(as_events(rows), spec, start=1000)
    assert g[0, 1, 0, 0] == 1 and g[1, 0, 1, 1] == 2 and g[1, 1, 31, 2] == 1 and g.sum() == 4


@pytest.mark.parametrize(
    ("size", "divisor", "transpose", "origin"),
    [
        (32, None, False, "first_event"),
        (32, None, False, "start"),
        (42, 3.04, True, "first_event"),
        (128, None, False, "first_event"),
    ],
)
def test_paper_framing_matches_event_by_event_reference(size, divisor, transpose, origin) -> None:
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(500, 9000, 3000))
    xyp = rng.integers(0, (128, 128, 2), (3000, 3))
    rows = [(int(x), int(y), int(ti), int(p)) for (x, y, p), ti in zip(xyp, t, strict=True)]
    spec = FrameSpec(
        time_steps=5, bin_us=1500, size=size, divisor=divisor, transpose=transpose, origin=origin
    )
    got = frame_events(as_events(rows), spec, start=700)
    o = 700 if origin == "start" else int(t[np.searchsorted(t, 700)])
    want = reference_frames(rows, 5, 1500, divisor or 128 / size, size, o, transpose)
    np.testing.assert_array_equal(got, want)


def test_divisor_follows_the_release_not_tonic_downsample() -> None:
    from tonic.transforms import Downsample

    ev = as_events([(76, 76, 0, 0)])
    f = frame_events(ev, FrameSpec(time_steps=1, bin_us=10, size=42, divisor=3.04))
    assert f[0, 0, 24, 24] == 1  # the release: 76 // 3.04 == 24.0
    assert Downsample(spatial_factor=1 / 3.04)(ev)["x"][0] == 25  # 76 * (1/3.04) == 25.0
    with pytest.raises(DataError, match="maps 128 pixels to 42 bins"):
        FrameSpec(time_steps=1, size=48, divisor=3.04)


def test_uniform_framing_keeps_the_whole_sample() -> None:
    from tonic.transforms import ToFrame

    rows = [(i % 128, 0, t, 0) for i, t in enumerate([0, 10, 20, 35, 40, 41, 99, 100, 103])]
    ev = as_events(rows)
    by_time = frame_events(ev, FrameSpec(time_steps=3, framing="uniform", size=128))
    # width (103 - 0) // 3 = 34: [0, 34), [34, 68), [68, end] - the tail stays in the last bin
    assert by_time.sum(axis=(1, 2, 3)).tolist() == [3, 3, 3]
    by_count = frame_events(ev, FrameSpec(time_steps=2, framing="uniform", uniform_split="number", size=128))
    assert by_count.sum(axis=(1, 2, 3)).tolist() == [4, 5]
    tonic_bins = ToFrame(sensor_size=(128, 128, 2), n_time_bins=3)(ev)
    assert tonic_bins.sum() == len(rows) - 1  # tonic drops the last event


def test_counts_above_int16_are_exact() -> None:
    ev = as_events([(5, 5, t % 7, 1) for t in range(40_000)])
    ev.sort(order="t")
    f = frame_events(ev, FrameSpec(time_steps=1, bin_us=10, size=32))
    assert f[0, 1, 1, 1] == 40_000 and f.sum() == 40_000


def test_empty_window_raises() -> None:
    ev = as_events([(1, 1, 100, 0)])
    with pytest.raises(NoEventsError):
        frame_events(ev, FrameSpec(time_steps=2, bin_us=10, size=32), start=200)
    with pytest.raises(NoEventsError):
        frame_events(ev, FrameSpec(time_steps=2, bin_us=10, size=32, origin="start"), start=0)


# --- cache ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("peak", "dtype"), [(255, "uint8"), (256, "uint16"), (70_000, "uint32")])
def test_cache_stores_counts_in_a_wide_enough_dtype(tmp_path, peak: int, dtype: str) -> None:
    w = CacheWriter(tmp_path / "e", {"p": 1}, (2, 2, 4, 4))
    for split in ("train", "test"):
        f = np.zeros((2, 2, 4, 4), np.int64)
        f[1, 0, 3, 2] = peak
        w.add(split, f, 3, f"{split}0")
    meta = w.commit({})
    assert meta["dtype"] == dtype and load_meta(tmp_path / "e")["max_count"] == peak
    x, y = CachedFrames(tmp_path / "e", "train")[0]
    assert x.dtype == torch.float32 and x[1, 0, 3, 2] == peak and y == 3
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_cache_abort_leaves_no_entry(tmp_path) -> None:
    w = CacheWriter(tmp_path / "e", {}, (1, 2, 2, 2))
    w.add("train", np.ones((1, 2, 2, 2), np.int64), 0, "a")
    w.abort()
    assert list(tmp_path.iterdir()) == [] and load_meta(tmp_path / "e") is None


def test_cached_frames_pickle_without_the_memory_map(tmp_path) -> None:
    w = CacheWriter(tmp_path / "e", {}, (1, 2, 2, 2))
    for split in ("train", "test"):
        w.add(split, np.ones((1, 2, 2, 2), np.int64), 1, "a")
    w.commit({})
    ds = CachedFrames(tmp_path / "e", "train")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._frames is None and torch.equal(clone[0][0], ds[0][0])


def test_frame_transform() -> None:
    x = torch.zeros(2, 2, 4, 4)
    x[0, 1, 0, 0], x[1, 0, 3, 1] = 5, 1
    assert FrameTransform(clip=2)(x)[0, 1, 0, 0] == 2
    assert FrameTransform(binarize=True)(x).sum() == 2
    flipped = FrameTransform(flip=1.0)(x)
    assert flipped[0, 1, 0, 3] == 5 and flipped[1, 0, 3, 2] == 1
    torch.manual_seed(0)
    shifted = [FrameTransform(max_shift=1)(x) for _ in range(20)]
    assert all(s.sum() <= x.sum() for s in shifted) and any(not torch.equal(s, x) for s in shifted)
