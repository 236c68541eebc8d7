"""The DVS emulator's physics and writer (src/mlfsnn/data/events/emulator.py), against hand-computed
events, an event-by-event reference written out here, the project's AEDAT 2.0 reader and tonic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mlfsnn.data.events.aedat import EVENT_DTYPE, SENSOR, read_aedat2_dvs128
from mlfsnn.data.events.emulator import (
    EmulatorParams,
    aedat2_bytes,
    geometry,
    params_from_cfg,
    pixel_events,
    record,
    record_many,
    saccade_path,
    threshold_maps,
)
from mlfsnn.errors import ConfigError

# Two pixels, sub-frames 1024 us apart (binary-exact arithmetic: every crossing is exact).
TIMES = np.array([0.0, 1024.0, 2048.0, 3072.0])
TOY = np.array(
    [
        [0.0, 0.0],
        [1.0, -0.25],  # A rises by 4 ON thresholds; B falls by one OFF threshold, exactly at t = 1024
        [1.0, -1.25],  # B falls by 4 more within one sub-frame interval
        [0.5, -1.25],  # A falls by 2 OFF thresholds
    ]
)
C = np.array([0.25, 0.25])


def events(t: np.ndarray, pixel: np.ndarray, on: np.ndarray) -> list[tuple[int, int, str]]:
    return sorted(
        (int(np.rint(a)), int(b), "ON" if c else "OFF") for a, b, c in zip(t, pixel, on, strict=True)
    )


def test_two_pixels_without_refractory_one_event_per_threshold_at_its_crossing_time() -> None:
    # A: 0 -> 1 over [0, 1024]: crossings of 0.25, 0.5, 0.75, 1.0 at 256, 512, 768, 1024; then
    # 1 -> 0.5 over [2048, 3072]: 0.75 at 2560 and 0.5 at 3072 (OFF). B: -0.25 reached at 1024 (OFF),
    # then -0.5 ... -1.25 at 1280, 1536, 1792, 2048.
    got = events(*pixel_events(TOY, TIMES, C, C, 0.0))
    want = sorted(
        [(t, 0, "ON") for t in (256, 512, 768, 1024)]
        + [(2560, 0, "OFF"), (3072, 0, "OFF")]
        + [(t, 1, "OFF") for t in (1024, 1280, 1536, 1792, 2048)]
    )
    assert got == want


def test_refractory_hold_loses_the_change_made_during_it() -> None:
    # R = 128 us. A: ON at 256, held until 384 where L = 0.375 becomes the reference; next ON at
    # 0.625 (t = 640), held until 768 (reference 0.75); ON at 1.0 (t = 1024), held until 1152 in
    # the flat interval (reference 1.0); then OFF at 0.75 (t = 2560), held until 2688 (reference
    # 0.6875): 0.4375 is never reached. B: OFF at 1024, held until 1152 (reference -0.375), OFF at
    # -0.625 (t = 1408), held until 1536 (-0.75), OFF at -1.0 (t = 1792), held until 1920 (-1.125):
    # -1.375 is never reached.
    got = events(*pixel_events(TOY, TIMES, C, C, 128.0))
    want = sorted(
        [(256, 0, "ON"), (640, 0, "ON"), (1024, 0, "ON"), (2560, 0, "OFF")]
        + [(t, 1, "OFF") for t in (1024, 1408, 1792)]
    )
    assert got == want


def test_a_hold_longer_than_a_sub_frame_interval() -> None:
    # R = 1500 us: A's hold after its ON at 256 ends at 1756 (L = 1.0 there); B's after 1024 ends at
    # 2524, past all its change: one event each, then A's OFF at 2560 (0.75 below 1.0).
    got = events(*pixel_events(TOY, TIMES, C, C, 1500.0))
    assert got == [(256, 0, "ON"), (1024, 1, "OFF"), (2560, 0, "OFF")]


def test_on_and_off_thresholds_are_per_pixel() -> None:
    # A with ON threshold 0.5: 0.5 at 512 and 1.0 at 1024; B with OFF threshold 0.5: -0.5 at 1280,
    # -1.0 at 1792 (-0.25 at 1024 is not enough).
    got = events(*pixel_events(TOY[:3], TIMES[:3], np.array([0.5, 9.0]), np.array([9.0, 0.5]), 0.0))
    assert got == [(512, 0, "ON"), (1024, 0, "ON"), (1280, 1, "OFF"), (1792, 1, "OFF")]


def reference_events(log_i, times, c_on, c_off, refractory):
    """The pixel model written out pixel by pixel and event by event (exact float times)."""
    out = []
    for i in range(log_i.shape[1]):
        ref, held, hold_until = float(log_i[0, i]), False, -math.inf
        for s in range(1, len(times)):
            t0, t1, l0, l1 = times[s - 1], times[s], log_i[s - 1, i], log_i[s, i]
            t = t0
            while True:
                if held:
                    if hold_until >= t1:
                        break
                    t = max(t, hold_until)
                    ref = l0 + (l1 - l0) * (t - t0) / (t1 - t0)  # the reference followed L until now
                    held = False
                if l1 - ref >= c_on[i]:
                    target, on = ref + c_on[i], True
                elif ref - l1 >= c_off[i]:
                    target, on = ref - c_off[i], False
                else:
                    break
                t = t0 + (target - l0) * (t1 - t0) / (l1 - l0)
                out.append((t, i, on))
                ref = target
                if refractory > 0:
                    held, hold_until = True, t + refractory
    return out


@pytest.mark.parametrize("refractory", [0.0, 37.5, 300.0, 2500.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_model_equals_the_event_by_event_reference(refractory: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    times = np.cumsum(np.concatenate([[0.0], rng.uniform(100, 1000, 40)]))
    log_i = np.cumsum(rng.normal(0, 0.3, (41, 25)), axis=0)
    c_on, c_off = rng.uniform(0.1, 0.4, 25), rng.uniform(0.1, 0.4, 25)
    t, pixel, on = pixel_events(log_i, times, c_on, c_off, refractory)
    want = sorted(reference_events(log_i, times, c_on, c_off, refractory), key=lambda e: (e[1], e[0]))
    got = sorted(zip(t.tolist(), pixel.tolist(), on.tolist(), strict=True), key=lambda e: (e[1], e[0]))
    assert len(want) > 50
    assert [(p, o) for _, p, o in got] == [(p, o) for _, p, o in want]
    np.testing.assert_allclose([e[0] for e in got], [e[0] for e in want], rtol=0, atol=1e-6)


def test_saccades_trace_a_closed_equilateral_triangle() -> None:
    path = saccade_path(np.array([0.0, 50.0, 100.0, 200.0, 300.0]), 8.0, 100.0)
    h = 8 * math.sqrt(3) / 2
    np.testing.assert_allclose(path, [[0, 0], [2, h / 2], [4, h], [-4, h], [0, 0]], atol=1e-12)


def test_threshold_mismatch_is_seeded() -> None:
    a, b = threshold_maps(EmulatorParams(seed=3)), threshold_maps(EmulatorParams(seed=3))
    c = threshold_maps(EmulatorParams(seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    on, off = a
    assert on.shape == off.shape == (SENSOR, SENSOR) and not np.array_equal(on, off)
    assert abs(on.mean() - 0.3) < 0.002 and abs(on.std() - 0.03) < 0.002


def test_a_digit_recording_is_time_sorted_on_the_sensor_and_deterministic() -> None:
    digits = load_digits()
    params = EmulatorParams()
    maps = threshold_maps(params)
    ev = record(digits.images[0] / 16, params, maps)
    assert ev.dtype == EVENT_DTYPE and 3000 < len(ev) < 30000
    assert np.all(np.diff(ev["t"]) >= 0) and ev["t"][0] >= 0 and ev["t"][-1] <= 300_000
    g = geometry(params)
    assert g.x0 <= ev["x"].min() and ev["x"].max() < g.x0 + g.width <= SENSOR
    assert 0.3 < ev["p"].mean() < 0.7  # a closed path: about as much ON as OFF
    again = record_many([digits.images[5] / 16, digits.images[0] / 16], params, maps)
    assert np.array_equal(again[1], ev)  # batching does not change a recording


def test_aedat2_written_parses_with_the_reader_and_with_tonic(tmp_path) -> None:
    import tonic.io

    params = EmulatorParams()
    ev = record(load_digits().images[7] / 16, params, threshold_maps(params))
    blob = aedat2_bytes(ev)
    assert blob.startswith(b"#!AER-DAT2.0\r\n")
    assert np.array_equal(read_aedat2_dvs128(blob, "d.aedat"), ev)
    path = tmp_path / "d.aedat"
    path.write_bytes(blob)
    version, start, _ = tonic.io.read_aedat_header_from_file(str(path))
    raw = tonic.io.get_aer_events_from_file(str(path), version, start)
    addr = raw["address"].astype(np.int64)
    assert version == 2.0 and len(raw) == len(ev)
    # DVS128 decoding as the CIFAR10-DVS release does it on tonic's raw addresses
    assert np.array_equal(127 - ((addr >> 1) & 0x7F), ev["x"])
    assert np.array_equal((addr >> 8) & 0x7F, ev["y"])
    assert np.array_equal(addr & 1, ev["p"])
    assert np.array_equal(raw["timeStamp"], ev["t"])


def test_known_events_are_encoded_as_dvs128_addresses() -> None:
    ev = np.array([(0, 0, 5, True), (127, 3, 9, False), (10, 127, 2**32 - 1, True)], dtype=EVENT_DTYPE)
    body = aedat2_bytes(ev, ())[len(b"#!AER-DAT2.0\r\n") :]
    words = np.frombuffer(body, dtype=">u4").reshape(-1, 2)
    assert words.tolist() == [[(127 << 1) | 1, 5], [3 << 8, 9], [(127 << 8) | (117 << 1) | 1, 2**32 - 1]]
    with pytest.raises(ValueError, match="32-bit"):
        aedat2_bytes(np.array([(0, 0, 2**32, True)], dtype=EVENT_DTYPE))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("threshold_on", -1, r"dataset.emulator.threshold_on=-1 is invalid: expected a number in \(0, 5\]"),
        ("seed", 1.5, r"dataset.emulator.seed=1.5 is invalid: expected an integer in \[0, "),
        ("black_level", 1.5, r"black_level=1.5 is invalid: expected a number in \(0, 1\]"),
        ("per_class", 0, r"per_class=0 is invalid: expected an integer in \[1, 10000\] or null"),
        ("digit_px", 128, r"digit_px=128 is invalid: the image .* need 152 pixels, the sensor has 128"),
        ("subframe_ms", 200, r"subframe_ms=200.0 is invalid: expected at most saccade_ms \(100\)"),
        ("refractory_us", True, r"refractory_us=True is invalid: expected a number"),
        ("thresh", 1, r"dataset.emulator.thresh is not an emulator key: expected one of seed, "),
    ],
)
def test_bad_emulator_values_are_one_line_errors(key: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        params_from_cfg({key: value})
    assert "\n" not in str(info.value)


def test_parameters_name_the_recordings() -> None:
    assert params_from_cfg({"saccade_px": 8}) == params_from_cfg(None) == EmulatorParams()
    assert EmulatorParams().digest() == params_from_cfg({"saccade_px": 8.0}).digest()
    assert EmulatorParams(seed=1).digest() != EmulatorParams().digest()
