"""Writers of tiny synthetic recordings in the real on-disk formats of the paper's event datasets.

* IBM DVS-Gesture: AEDAT 3.1 (5-line CRLF header, 28-byte little-endian packet headers, polarity
  packets of 8-byte events plus non-polarity packets), ``_labels.csv``, trial lists, ``.tar.gz``.
* CIFAR10-DVS (figshare): AEDAT 2.0, big-endian ``address, timestamp`` pairs, one folder or zip per class.
* tonic's DVSGesture copy: ``DVSGesture/ibmGesture{Train,Test}/userNN_<light>/<label>.npy`` with
  ``[N, 4]`` rows ``x, y, p, t_ms``.

Events are ``(x, y, t_us, p)`` tuples in sensor coordinates (x = column, y = row).
``reference_frames`` frames them event by event: the expected value for the framing code.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

Event = tuple[int, int, int, int]

AEDAT31_HEADER = (
    b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
    b"#Start-Time: 2017-06-01 12:00:00 (TZ+0000)\r\n#!END-HEADER\r\n"
)
AEDAT2_HEADER = (
    b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
    b"# Data format is int32 address, int32 timestamp (8 bytes total), "
    b"repeated for each event\r\n"
    b"# Timestamps tick is 1 us\r\n# created Thu Dec 03 13:51:48 CST 2015\r\n"
)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_HDR = struct.Struct("<hhiiiiii")


def polarity_packet(events: Sequence[Event], ts_overflow: int = 0) -> bytes:
    """A type-1 packet; ``t`` must be below 2**31 (the overflow field holds the high bits)."""
    n = len(events)
    body = b"".join(struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | 1, t) for x, y, t, p in events)
    return _HDR.pack(1, 1, 8, 4, ts_overflow, n, n, n) + body


def special_packet(stamps: Sequence[int]) -> bytes:
    """A type-0 (special event) packet: 8-byte events, e.g. timestamp resets; not polarity events."""
    n = len(stamps)
    body = b"".join(struct.pack("<Ii", (0x5A << 8) | (2 << 1) | 1, t) for t in stamps)
    return _HDR.pack(0, 1, 8, 4, 0, n, n, n) + body


def imu6_packet(stamps: Sequence[int]) -> bytes:
    """A type-2 (IMU6) packet: 36-byte events (info, timestamp, 7 floats)."""
    n = len(stamps)
    body = b"".join(struct.pack("<Ii7f", 1, t, *range(7)) for t in stamps)
    return _HDR.pack(2, 1, 36, 4, 0, n, n, n) + body


def aedat31_bytes(events: Sequence[Event], per_packet: int = 50, extra_packets: bool = True) -> bytes:
    """Polarity packets of ``per_packet`` events, with a special and an IMU6 packet in between."""
    out = [AEDAT31_HEADER]
    if extra_packets:
        out.append(special_packet([events[0][2] if events else 0]))
    for i in range(0, len(events), per_packet):
        out.append(polarity_packet(events[i : i + per_packet]))
        if extra_packets and i == 0:
            out.append(imu6_packet([events[0][2], events[0][2] + 1]))
    return b"".join(out)


def labels_csv(rows: Iterable[tuple[int, int, int]]) -> bytes:
    body = "".join(f"{c},{s},{e}\r\n" for c, s, e in rows)
    return ("class,startTime_usec,endTime_usec\r\n" + body).encode()


def gesture_trial(
    rows: Sequence[tuple[int, int, int]], seed: int, per_row: int = 40, gap_events: int = 5
) -> list[Event]:
    """Random events inside every label window plus a few between windows, sorted by time."""
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    for _cls, start, end in rows:
        for t in rng.integers(start, end, per_row):
            x, y, p = (int(v) for v in rng.integers(0, (128, 128, 2)))
            events.append((x, y, int(t), p))
    lo, hi = min(s for _, s, _ in rows), max(e for _, _, e in rows)
    for t in np.linspace(max(lo - 500, 0), hi + 500, gap_events).astype(int):
        events.append((1, 2, int(t), 0))
    return sorted(events, key=lambda e: e[2])


def write_gesture(
    root: Path,
    trials: dict[str, tuple[list[Event], list[tuple[int, int, int]]]],
    archive: bool = False,
    lists: bool = True,
) -> Path:
    """``root/DvsGesture/`` (or ``root/DvsGesture.tar.gz`` with ``archive``); returns what was written."""
    files: dict[str, bytes] = {}
    for name, (events, rows) in sorted(trials.items()):
        files[f"{name}.aedat"] = aedat31_bytes(events)
        files[f"{name}_labels.csv"] = labels_csv(rows)
    if lists:
        for split, users in (("train", range(1, 24)), ("test", range(24, 30))):
            names = [f"{n}.aedat" for n in sorted(trials) if int(n[4:6]) in users]
            files[f"trials_to_{split}.txt"] = ("\r\n".join(names) + "\r\n").encode()
    root.mkdir(parents=True, exist_ok=True)
    if archive:
        path = root / "DvsGesture.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"DvsGesture/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path
    folder = root / "DvsGesture"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def aedat2_bytes(events: Sequence[Event]) -> bytes:
    """DVS128 addresses as jAER writes them: ``y << 8 | (127 - x) << 1 | p``, big-endian."""
    body = b"".join(struct.pack(">II", (y << 8) | ((127 - x) << 1) | p, t) for x, y, t, p in events)
    return AEDAT2_HEADER + body


def cifar_events(seed: int, n: int = 60, duration_us: int = 150_000, t0: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(t0, t0 + duration_us, n))
    xyp = rng.integers(0, (128, 128, 2), (n, 3))
    return [(int(x), int(y), int(ti), int(p)) for (x, y, p), ti in zip(xyp, t, strict=True)]


def write_cifar10_dvs(
    root: Path,
    per_class: int = 10,
    zipped: bool = False,
    events: dict[tuple[str, int], list[Event]] | None = None,
) -> Path:
    """``root/<class>/cifar10_<class>_<i>.aedat`` or ``root/<class>.zip`` holding ``<class>/...``."""
    root.mkdir(parents=True, exist_ok=True)
    events = events or {}
    for ci, cls in enumerate(CIFAR_CLASSES):
        files = {
            f"cifar10_{cls}_{i}.aedat": aedat2_bytes(events.get((cls, i)) or cifar_events(1000 * ci + i))
            for i in range(per_class)
        }
        if zipped:
            with zipfile.ZipFile(root / f"{cls}.zip", "w") as zf:
                for name, data in files.items():
                    zf.writestr(f"{cls}/{name}", data)
        else:
            (root / cls).mkdir(exist_ok=True)
            for name, data in files.items():
                (root / cls / name).write_bytes(data)
    return root


def write_tonic_gesture(root: Path, users: dict[str, Sequence[int]], seed: int = 0, n: int = 30) -> Path:
    """tonic's DVSGesture layout. ``users`` maps ``"train"/"test"`` to user numbers; every user gets
    one lighting condition and one ``<label>.npy`` per class (tonic wants >= 100 files per split)."""
    rng = np.random.default_rng(seed)
    loc = root / "DVSGesture"
    for split, folder in (("train", "ibmGestureTrain"), ("test", "ibmGestureTest")):
        loc.mkdir(parents=True, exist_ok=True)
        (loc / f"{folder}.tar.gz").write_bytes(b"placeholder: tonic only checks that the archive exists")
        for user in users[split]:
            d = loc / folder / f"user{user:02d}_led"
            d.mkdir(parents=True, exist_ok=True)
            for label in range(11):
                t_ms = np.sort(rng.integers(0, 200, n))
                xyp = rng.integers(0, (128, 128, 2), (n, 3))
                arr = np.concatenate([xyp, t_ms[:, None]], 1)
                np.save(d / f"{label}.npy", arr.astype(np.int32))
    return loc


def reference_frames(
    rows, steps: int, bin_us: int, div: float, size: int, origin: int, transpose: bool = False
) -> np.ndarray:
    """The paper's framing written out event by event (Python float floor division like the release)."""
    out = np.zeros((steps, 2, size, size), dtype=np.int64)
    for x, y, t, p in rows:
        b = (t - origin) // bin_us
        if t >= origin and b < steps:
            col, row = int(x // div), int(y // div)
            out[(b, p, col, row) if transpose else (b, p, row, col)] += 1
    return out
