"""Readers for the two AEDAT formats the paper's event datasets ship in.

Both readers take the file's bytes (a file on disk, a tar member or a zip member alike) and return
tonic's event layout (structured ``x, y, t, p``; ``t`` in microseconds, int64), sorted by time.

Why not ``tonic.io`` (1.7) directly (see docs/data.md for the evidence):

* ``read_dvs_ibm`` unpacks the 3-tuple returned by ``read_aedat_header_from_file`` into two names
  and raises ``ValueError`` on every file.
* ``get_aer_events_from_file`` (AEDAT 3.x) ignores the packet's event type and event size: the
  special-event packets of a recording are decoded as polarity events, and a packet whose events are
  not 8 bytes wide desynchronises the rest of the file. It also drops the timestamp-overflow field.
* All of ``tonic.io``'s AEDAT functions take a path only, and silently drop a truncated tail.

The AEDAT 2.0 decoding below is cross-checked against tonic's ``read_aedat_header_from_file`` +
``get_aer_events_from_file`` in tests/data/test_events.py: on intact files they agree.
"""

from __future__ import annotations

import re
import struct

import numpy as np

from ...errors import DataError

__all__ = [
    "EVENT_DTYPE",
    "SENSOR",
    "CorruptFileError",
    "parse_header",
    "read_aedat2_dvs128",
    "read_aedat31_polarity",
    "validate_events",
]

# tonic.io.events_struct: what tonic's transforms expect.
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])
SENSOR = 128  # DVS128: both datasets were recorded with 128 x 128 pixel sensors

# eventType, eventSource, eventSize, eventTSOffset, eventTSOverflow, eventCapacity, eventNumber, eventValid
_PACKET_HEADER = struct.Struct("<hhiiiiii")
POLARITY_EVENT = 1
_VERSION = re.compile(rb"^#!AER-DAT(\d+)\.(\d+)")


class CorruptFileError(DataError):
    """A recording or label file that cannot be read as its format says; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple:  # travels back from prepare worker processes intact
        return (CorruptFileError, (self.path, self.reason))


def parse_header(buf: bytes, name: str) -> tuple[tuple[int, int], int]:
    """``((major, minor), data_start)`` of an AEDAT 2.x / 3.x file.

    The header is the run of lines starting with ``#``; AEDAT 3.x ends it with ``#!END-HEADER``.
    Line endings may be CRLF (what jAER and cAER write) or LF.
    """
    m = _VERSION.match(buf)
    if m is None:
        raise CorruptFileError(name, "not an AEDAT file (no '#!AER-DAT' first line)")
    version = (int(m.group(1)), int(m.group(2)))
    pos = 0
    while pos < len(buf) and buf[pos : pos + 1] == b"#":
        nl = buf.find(b"\n", pos)
        if nl < 0:
            raise CorruptFileError(name, "header not terminated (file truncated?)")
        line = buf[pos:nl].rstrip(b"\r")
        pos = nl + 1
        if line == b"#!END-HEADER":
            return version, pos
    if version[0] >= 3:
        raise CorruptFileError(name, "AEDAT 3 header has no '#!END-HEADER' line")
    return version, pos


def validate_events(ev: np.ndarray, name: str, sort: bool = False) -> np.ndarray:
    """``ev`` if its addresses lie on the sensor and its timestamps are in order (the framing slices
    by binary search), else :class:`CorruptFileError`. ``sort`` puts them in order instead (for
    third-party conversions such as tonic's copies, whose ordering we do not control)."""
    if sort and len(ev) > 1 and np.any(np.diff(ev["t"]) < 0):
        ev = np.sort(ev, order="t", kind="stable")
    if len(ev) and (
        ev["x"].min() < 0 or ev["y"].min() < 0 or ev["x"].max() >= SENSOR or ev["y"].max() >= SENSOR
    ):
        raise CorruptFileError(name, f"event address outside the {SENSOR}x{SENSOR} sensor")
    if len(ev) > 1 and np.any(np.diff(ev["t"]) < 0):
        raise CorruptFileError(name, "event timestamps are not in time order")
    return ev


def _events(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, name: str) -> np.ndarray:
    if len(t) and (x.max() >= SENSOR or y.max() >= SENSOR):  # before the int16 cast can hide it
        raise CorruptFileError(name, f"event address outside the {SENSOR}x{SENSOR} sensor")
    ev = np.empty(len(t), dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return validate_events(ev, name)


def read_aedat31_polarity(buf: bytes, name: str) -> np.ndarray:
    """Polarity events (packet type 1) of an AEDAT 3.1 file; every other packet type is skipped.

    Each packet is a 28-byte header followed by ``eventNumber * eventSize`` bytes. A polarity event
    is ``uint32 data`` (bit 1 polarity, bits 2-16 y, bits 17-31 x) and ``int32 timestamp``; the full
    timestamp is ``tsOverflow << 31 | timestamp``. The validity bit is not looked at, as in the
    paper's release (its files mark every polarity event valid).
    """
    version, pos = parse_header(buf, name)
    if version[0] != 3:
        raise CorruptFileError(name, f"expected AEDAT 3.1, found AEDAT {version[0]}.{version[1]}")
    words: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    end = len(buf)
    while pos < end:
        if end - pos < _PACKET_HEADER.size:
            raise CorruptFileError(name, f"truncated packet header at byte {pos}")
        etype, _src, esize, tsoff, overflow, capacity, number, _valid = _PACKET_HEADER.unpack_from(buf, pos)
        pos += _PACKET_HEADER.size
        if esize <= 0 or number < 0 or capacity < number or overflow < 0:
            raise CorruptFileError(name, f"corrupt packet header at byte {pos - _PACKET_HEADER.size}")
        nbytes = number * esize
        if pos + nbytes > end:
            raise CorruptFileError(
                name,
                f"truncated: packet at byte {pos - _PACKET_HEADER.size} needs "
                f"{nbytes} bytes, {end - pos} left",
            )
        if etype == POLARITY_EVENT:
            if esize != 8 or tsoff != 4:
                raise CorruptFileError(name, f"polarity packet with eventSize {esize}, tsOffset {tsoff}")
            raw = np.frombuffer(buf, dtype="<u4", count=2 * number, offset=pos).reshape(-1, 2)
            words.append(raw[:, 0])
            stamps.append(raw[:, 1].astype(np.int64) | (np.int64(overflow) << 31))
        pos += nbytes
    if not words:
        return _events(*(np.empty(0, np.int64),) * 4, name)
    w = np.concatenate(words)
    t = np.concatenate(stamps)
    return _events((w >> 17) & 0x7FFF, (w >> 2) & 0x7FFF, t, (w >> 1) & 1, name)


def read_aedat2_dvs128(buf: bytes, name: str) -> np.ndarray:
    """Events of an AEDAT 2.0 file from a DVS128 (CIFAR10-DVS): big-endian ``uint32 address,
    uint32 timestamp`` pairs after the ``#`` header.

    Address decoding follows jAER's DVS128 layout as the paper's release applies it: ``p = bit 0``,
    ``x = 127 - bits 1-7``, ``y = bits 8-14``.
    """
    version, pos = parse_header(buf, name)
    if version[0] != 2:
        raise CorruptFileError(name, f"expected AEDAT 2.0, found AEDAT {version[0]}.{version[1]}")
    body = len(buf) - pos
    if body % 8:
        raise CorruptFileError(name, f"truncated: {body} data bytes is not a whole number of 8-byte events")
    raw = np.frombuffer(buf, dtype=">u4", offset=pos).reshape(-1, 2)
    addr, t = raw[:, 0], raw[:, 1].astype(np.int64)
    return _events(SENSOR - 1 - ((addr >> 1) & 0x7F), (addr >> 8) & 0x7F, t, addr & 1, name)
