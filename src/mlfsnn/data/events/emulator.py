"""A small event-camera (DVS) emulator: a still image moved along saccades in front of a DVS128.

This is how N-MNIST was made from MNIST (Orchard et al. 2015, a real sensor on a pan-tilt unit in
front of a monitor), emulated: the physics below, the parameters in :class:`EmulatorParams`, and
docs/data.md ("Emulated event data: digits_dvs") for the values used and what they give.

* **Scene.** An 8 x 8 grey image ``v`` (values 0..1, scikit-learn's digits) is shown as
  ``digit_px`` x ``digit_px`` sensor pixels: bilinear between the centres of its pixels, fading to
  black over one image pixel outside them. The light a pixel receives is
  ``I = black_level + (1 - black_level) * v`` (a display whose black is ``black_level`` of its white).
* **Motion.** Three saccades along an equilateral triangle of side ``saccade_px`` (down-right, left,
  up-right back to the start), ``saccade_ms`` each at constant speed. The image is rendered at
  equally spaced sub-frames at most ``subframe_ms`` apart (a saccade in equal steps); between two
  sub-frames every pixel's log intensity ``L = ln I`` is linear in time.
* **Pixel.** Each pixel keeps a reference level ``r``: the log intensity it memorised when it was
  last reset (at ``t = 0``: ``L(0)``; the sensor has adapted to the still image). It sends an ON
  event at the moment ``L(t) - r`` reaches its ON threshold, an OFF event when ``r - L(t)`` reaches
  its OFF threshold (the crossing time on the interpolated ``L``). After an event the pixel is held in
  reset for ``refractory_us``: its reference follows ``L`` and no event is sent, so a change during
  the hold is lost; at the end of the hold ``r = L(t_event + refractory)``. A change that spans
  several thresholds therefore gives several events, each at its own crossing time, when the
  crossings are at least ``refractory_us`` apart (with ``refractory_us = 0``: always; ``r`` then
  moves by one threshold per event).
* **Mismatch.** The sensor's ON and OFF thresholds are drawn once per seed, per pixel, from
  ``N(threshold, threshold_sigma)`` (independently; clipped to >= 0.01): the same sensor records
  every image.
* **Output.** Timestamps in microseconds (the crossing time rounded to the nearest µs), events
  sorted by time, then row, then column; polarity 1 = ON. Written as AEDAT 2.0 with DVS128
  addresses (:func:`aedat2_bytes`), which :func:`.aedat.read_aedat2_dvs128` and tonic read.
* **Not modelled**: noise (shot noise, leak events), the photoreceptor's bandwidth and the readout's
  latency and arbitration, optics (lens blur beyond the bilinear display), monitor refresh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NoReturn

import numpy as np

from ...errors import ConfigError
from .aedat import EVENT_DTYPE, SENSOR

__all__ = [
    "AEDAT2_COMMENTS",
    "EMULATOR_VERSION",
    "EmulatorParams",
    "Geometry",
    "aedat2_bytes",
    "geometry",
    "params_from_cfg",
    "pixel_events",
    "record",
    "record_many",
    "saccade_path",
    "threshold_maps",
]

EMULATOR_VERSION = 1  # bump when the physics or the writer change what a parameter set produces
IMAGE = 8  # scikit-learn's digits are 8 x 8
MIN_THRESHOLD = 0.01
MAX_SUBFRAMES = 100_000  # per recording: bounds the work a configuration can ask for
AEDAT2_COMMENTS = (
    "This is a raw AE data file - emulated by mlfsnn's DVS emulator, not recorded by a sensor",
    "Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event",
    "Timestamps tick is 1 us",
    "Address: DVS128 (p = bit 0, 1 = ON; x = 127 - bits 1-7; y = bits 8-14)",
)


@dataclass(frozen=True)
class EmulatorParams:
    """Everything that changes the emulated recordings (``dataset.emulator.*``)."""

    seed: int = 0  # draws the sensor's threshold mismatch
    digit_px: int = 96  # the image's width on the sensor, in pixels (12 per image pixel)
    saccade_px: float = 8.0  # side of the saccade triangle, in sensor pixels
    saccade_ms: float = 100.0  # duration of one saccade
    subframe_ms: float = 5.0  # longest time between two rendered sub-frames
    threshold_on: float = 0.3  # mean ON contrast threshold (log intensity units)
    threshold_off: float = 0.3  # mean OFF contrast threshold
    threshold_sigma: float = 0.03  # pixel-to-pixel standard deviation of both thresholds
    refractory_us: float = 1000.0  # reset hold after an event
    black_level: float = 0.25  # the display's black, as a fraction of its white
    per_class: int | None = None  # only the first N digits of each class (smoke tests); None: all

    def key(self) -> dict[str, Any]:
        return {"version": EMULATOR_VERSION, **asdict(self)}

    def digest(self) -> str:
        """12 hex digits naming the recordings these parameters produce."""
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:12]


# key -> (kind, low, high, low_open): what params_from_cfg accepts
_RANGES: dict[str, tuple[str, float, float, bool]] = {
    "seed": ("int", 0, 2**32 - 1, False),
    "digit_px": ("int", IMAGE, SENSOR, False),
    "saccade_px": ("number", 0, SENSOR / 2, True),
    "saccade_ms": ("number", 0, 10_000, True),
    "subframe_ms": ("number", 0, 10_000, True),
    "threshold_on": ("number", 0, 5, True),
    "threshold_off": ("number", 0, 5, True),
    "threshold_sigma": ("number", 0, 1, False),
    "refractory_us": ("number", 0, 1_000_000, False),
    "black_level": ("number", 0, 1, True),
    "per_class": ("int", 1, 10_000, False),
}


def _bad(key: str, value: Any, allowed: str) -> NoReturn:
    shown = "null" if value is None else repr(value)
    raise ConfigError(f"dataset.emulator.{key}={shown[:200]} is invalid: {allowed}")


def _checked(key: str, value: Any) -> Any:
    kind, low, high, low_open = _RANGES[key]
    if key == "per_class" and value is None:
        return None
    what = "an integer" if kind == "int" else "a number"
    rng = f"in {'(' if low_open else '['}{low:g}, {high:g}]" + (" or null" if key == "per_class" else "")
    ok_type = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        _bad(key, value, f"expected {what} {rng}")
    if value < low or value > high or (low_open and value == low):
        _bad(key, value, f"expected {what} {rng}")
    return int(value) if kind == "int" else float(value)


def params_from_cfg(cfg: Any) -> EmulatorParams:
    """The :class:`EmulatorParams` of a ``dataset.emulator`` mapping (missing keys: the defaults);
    a bad value or an unknown key is a one-line :class:`ConfigError`."""
    cfg = {} if cfg is None else cfg
    if not hasattr(cfg, "items"):
        raise ConfigError(f"dataset.emulator={cfg!r} is invalid: expected a mapping of emulator keys")
    names = [f.name for f in fields(EmulatorParams)]
    values: dict[str, Any] = {}
    for key, value in cfg.items():
        if key not in names:
            raise ConfigError(
                f"dataset.emulator.{key} is not an emulator key: expected one of {', '.join(names)}"
            )
        values[str(key)] = _checked(str(key), value)
    params = EmulatorParams(**values)
    if params.subframe_ms > params.saccade_ms:
        _bad("subframe_ms", params.subframe_ms, f"expected at most saccade_ms ({params.saccade_ms:g})")
    if math.ceil(params.saccade_ms / params.subframe_ms) * 3 > MAX_SUBFRAMES:
        _bad("subframe_ms", params.subframe_ms, f"more than {MAX_SUBFRAMES} sub-frames per recording")
    width = params.digit_px * (IMAGE + 1) / IMAGE + params.saccade_px
    if width > SENSOR:
        _bad(
            "digit_px",
            params.digit_px,
            f"the image ({params.digit_px} * 9/8 pixels with its fade to black) and the saccades "
            f"({params.saccade_px:g} pixels) need {width:g} pixels, the sensor has {SENSOR}",
        )
    return params


def saccade_path(times_us: np.ndarray, side_px: float, saccade_us: float) -> np.ndarray:
    """``[len(times), 2]`` offsets ``(x, y)`` of the view along the triangle at ``times_us``."""
    h = side_px * math.sqrt(3) / 2
    corners = np.array([[0.0, 0.0], [side_px / 2, h], [-side_px / 2, h], [0.0, 0.0]])
    leg = np.minimum((np.asarray(times_us) // saccade_us).astype(np.intp), 2)
    frac = (np.asarray(times_us) - leg * saccade_us) / saccade_us
    return corners[leg] + (corners[leg + 1] - corners[leg]) * frac[:, None]


def _hat(pos: np.ndarray, first: int, count: int, pitch: float) -> np.ndarray:
    """``[S, count, IMAGE + 2]`` bilinear weights of the zero-padded image's pixels for the sensor
    pixels ``first .. first + count - 1`` (centres at ``i + 0.5``), image corner at ``pos[s]``."""
    centres = np.arange(first, first + count) + 0.5
    q = (centres[None, :] - pos[:, None]) / pitch - 0.5  # in image pixels; k = centre of pixel k
    k = np.arange(-1, IMAGE + 1)
    return np.maximum(0.0, 1.0 - np.abs(q[:, :, None] - k[None, None, :]))


@dataclass(frozen=True, eq=False)
class Geometry:
    """What every recording of one parameter set shares: sub-frame times, the region of the sensor
    the image can reach (outside it nothing changes, so no event), and the rendering weights."""

    times_us: np.ndarray  # [S + 1]
    y0: int
    x0: int
    height: int
    width: int
    wy: np.ndarray  # [S + 1, height, IMAGE + 2]
    wx: np.ndarray  # [S + 1, width, IMAGE + 2]


@functools.lru_cache(maxsize=4)
def geometry(params: EmulatorParams) -> Geometry:
    steps = math.ceil(params.saccade_ms / params.subframe_ms)
    saccade_us = params.saccade_ms * 1000
    times = np.linspace(0.0, 3 * saccade_us, 3 * steps + 1)
    path = saccade_path(times, params.saccade_px, saccade_us)
    pitch = params.digit_px / IMAGE
    lo, hi = path.min(axis=0), path.max(axis=0)
    corner = path + (SENSOR - params.digit_px - (hi - lo)) / 2 - lo  # the image's top-left corner
    start = np.maximum(np.floor(corner.min(axis=0) - pitch / 2), 0).astype(int)
    stop = np.minimum(np.ceil(corner.max(axis=0) + params.digit_px + pitch / 2), SENSOR).astype(int)
    (x0, y0), (x1, y1) = start, stop
    wx = _hat(corner[:, 0], x0, x1 - x0, pitch)
    wy = _hat(corner[:, 1], y0, y1 - y0, pitch)
    return Geometry(times, int(y0), int(x0), int(y1 - y0), int(x1 - x0), wy, wx)


def threshold_maps(params: EmulatorParams) -> tuple[np.ndarray, np.ndarray]:
    """The sensor's per-pixel ON and OFF thresholds ``[128, 128]``, drawn from the seed."""
    rng = np.random.default_rng([params.seed, EMULATOR_VERSION])
    on = params.threshold_on + params.threshold_sigma * rng.standard_normal((SENSOR, SENSOR))
    off = params.threshold_off + params.threshold_sigma * rng.standard_normal((SENSOR, SENSOR))
    return np.maximum(on, MIN_THRESHOLD), np.maximum(off, MIN_THRESHOLD)


def _fires(diff: np.ndarray, c_on: np.ndarray, c_off: np.ndarray) -> np.ndarray:
    return (diff >= c_on) | (diff <= -c_off)


def pixel_events(
    log_i: np.ndarray, times_us: np.ndarray, c_on: np.ndarray, c_off: np.ndarray, refractory_us: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The DVS pixel model (module docstring) for ``N`` pixels: ``log_i[s]`` is their log intensity
    at ``times_us[s]``, linear in between; ``c_on``, ``c_off`` their thresholds ``[N]``.

    Returns ``(t_us, pixel, on)`` in the order the events are found (sub-frame interval by
    interval); ``t_us`` are exact crossing times (float). Vectorised over pixels: every interval
    tests all pixels once, then only those that fired, once per event they can still send in it.
    """
    ref = np.array(log_i[0], dtype=np.float64)
    held, release = np.empty(0, np.intp), np.empty(0)  # pixels in reset, and when it ends
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for s in range(1, len(times_us)):
        t0, t1 = float(times_us[s - 1]), float(times_us[s])
        l0, l1 = log_i[s - 1], log_i[s]
        fire = _fires(l1 - ref, c_on, c_off)
        fire[held] = False
        active = np.flatnonzero(fire)
        ends = release < t1
        if ends.any():  # the hold ends in this interval: the reference is the level then
            idx, at = held[ends], release[ends]
            held, release = held[~ends], release[~ends]
            ref[idx] = l0[idx] + (l1[idx] - l0[idx]) * ((at - t0) / (t1 - t0))
            idx = idx[_fires(l1[idx] - ref[idx], c_on[idx], c_off[idx])]
            active = np.concatenate([active, idx])
        while len(active):
            a0, a1, r = l0[active], l1[active], ref[active]
            slope = (a1 - a0) / (t1 - t0)
            on = a1 - r >= c_on[active]
            level = np.where(on, r + c_on[active], r - c_off[active])
            step = np.divide(level - a0, slope, out=np.zeros_like(slope), where=slope != 0)
            t = np.clip(t0 + step, t0, t1)
            found.append((t, active, on))
            free = t + refractory_us
            inside = free < t1
            held = np.concatenate([held, active[~inside]])
            release = np.concatenate([release, free[~inside]])
            active = active[inside]
            ref[active] = level[inside] + slope[inside] * refractory_us  # L at the end of the hold
            active = active[_fires(l1[active] - ref[active], c_on[active], c_off[active])]
    if not found:
        return np.empty(0), np.empty(0, np.intp), np.empty(0, bool)
    t, pixel, on = (np.concatenate(part) for part in zip(*found, strict=True))
    return t, pixel, on


def record(image: np.ndarray, params: EmulatorParams, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The events (:data:`.aedat.EVENT_DTYPE`, sorted) of one ``8 x 8`` image (values 0..1) on
    the sensor with thresholds ``maps`` (:func:`threshold_maps`)."""
    return record_many([image], params, maps)[0]


def record_many(
    images: list[np.ndarray] | np.ndarray, params: EmulatorParams, maps: tuple[np.ndarray, np.ndarray]
) -> list[np.ndarray]:
    """:func:`record` of several images in one pass of the pixel model (the same events: pixels are
    independent; a batch only spreads numpy's per-call cost over more pixels)."""
    if len(images) == 0:
        return []
    g = geometry(params)
    rows, cols = slice(g.y0, g.y0 + g.height), slice(g.x0, g.x0 + g.width)
    c_on, c_off = (m[rows, cols].ravel() for m in maps)
    parts, where = [], []
    for image in images:
        if np.shape(image) != (IMAGE, IMAGE):
            raise ValueError(f"expected an {IMAGE} x {IMAGE} image, got {np.shape(image)}")
        padded = np.zeros((IMAGE + 2, IMAGE + 2))
        padded[1:-1, 1:-1] = np.clip(image, 0.0, 1.0)
        v = np.matmul(np.matmul(g.wy, padded), g.wx.transpose(0, 2, 1)).reshape(len(g.times_us), -1)
        moving = np.flatnonzero(v.max(axis=0) > v.min(axis=0))  # the others never send an event
        parts.append(v[:, moving])
        where.append(moving)
    sizes = np.cumsum([0, *(len(m) for m in where)])
    log_i = np.log(params.black_level + (1.0 - params.black_level) * np.concatenate(parts, axis=1))
    moving = np.concatenate(where)
    t, pixel, on = pixel_events(log_i, g.times_us, c_on[moving], c_off[moving], params.refractory_us)
    out = []
    for k in range(len(where)):
        mine = (pixel >= sizes[k]) & (pixel < sizes[k + 1])
        cell = moving[pixel[mine]]
        ev = np.empty(len(cell), dtype=EVENT_DTYPE)
        ev["x"] = g.x0 + cell % g.width
        ev["y"] = g.y0 + cell // g.width
        ev["t"] = np.rint(t[mine]).astype(np.int64)
        ev["p"] = on[mine]
        out.append(ev[np.lexsort((ev["x"], ev["y"], ev["t"]))])
    return out


def aedat2_bytes(events: np.ndarray, comments: tuple[str, ...] = AEDAT2_COMMENTS) -> bytes:
    """An AEDAT 2.0 file of DVS128 events: ``#`` header lines (CRLF, as jAER writes them), then
    big-endian ``uint32 address, uint32 timestamp`` with ``address = y << 8 | (127 - x) << 1 | p``,
    the layout :func:`.aedat.read_aedat2_dvs128` decodes."""
    t = events["t"]
    if len(t) and (t.min() < 0 or t.max() >= 2**32):
        raise ValueError("AEDAT 2.0 timestamps are unsigned 32-bit microseconds")
    header = "".join(f"{line}\r\n" for line in ("#!AER-DAT2.0", *(f"# {c}" for c in comments)))
    body = np.empty((len(t), 2), dtype=">u4")
    x, y = events["x"].astype(np.uint32), events["y"].astype(np.uint32)
    body[:, 0] = (y << 8) | ((SENSOR - 1 - x) << 1) | events["p"].astype(np.uint32)
    body[:, 1] = t
    return header.encode("ascii") + body.tobytes()
