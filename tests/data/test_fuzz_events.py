"""Property-based: the event readers never crash, hang or return garbage on random or cut bytes.

Every input either decodes to events inside the 128x128 sensor with sorted timestamps, or raises
CorruptFileError naming the file in one line.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_fixtures import AEDAT2_HEADER, AEDAT31_HEADER, aedat2_bytes, aedat31_bytes, labels_csv
from mlfsnn.data.events.aedat import CorruptFileError, read_aedat2_dvs128, read_aedat31_polarity
from mlfsnn.data.events.dvs_gesture import parse_labels

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENTS = st.lists(
    st.tuples(st.integers(0, 127), st.integers(0, 127), st.integers(0, 2**30), st.integers(0, 1)),
    min_size=1,
    max_size=40,
).map(lambda evs: sorted(evs, key=lambda e: e[2]))


def check(reader, buf: bytes) -> None:
    try:
        ev = reader(buf, "rec.aedat")
    except CorruptFileError as exc:
        assert "rec.aedat" in str(exc) and "\n" not in str(exc)
        return
    assert ev.dtype.names == ("x", "y", "t", "p")
    if len(ev):
        assert ev["x"].min() >= 0 and ev["x"].max() < 128 and ev["y"].min() >= 0 and ev["y"].max() < 128
        assert np.all(np.diff(ev["t"]) >= 0)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(buf: bytes) -> None:
    check(read_aedat31_polarity, buf)
    check(read_aedat2_dvs128, buf)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_after_a_valid_header(buf: bytes) -> None:
    check(read_aedat31_polarity, AEDAT31_HEADER + buf)
    check(read_aedat2_dvs128, AEDAT2_HEADER + buf)


@FUZZ
@given(EVENTS, st.data())
def test_truncated_files_fail_loudly(events: list, data: st.DataObject) -> None:
    for make, reader in ((aedat31_bytes, read_aedat31_polarity), (aedat2_bytes, read_aedat2_dvs128)):
        buf = make(events)
        full = reader(buf, "rec.aedat")
        assert len(full) == len(events)  # intact: every event back
        cut = data.draw(st.integers(1, len(buf) - 1))
        try:
            ev = reader(buf[:cut], "rec.aedat")
        except CorruptFileError as exc:
            assert "rec.aedat" in str(exc)
            continue
        # A cut exactly on a packet / event boundary is a valid shorter file: a prefix of the events.
        assert np.array_equal(ev, full[: len(ev)])


@FUZZ
@given(st.text(max_size=200))
def test_label_csv_text(text: str) -> None:
    try:
        rows = parse_labels(text, "user01_fluorescent_labels.csv")
    except CorruptFileError as exc:
        assert "user01_fluorescent_labels.csv" in str(exc)
        return
    assert all(1 <= cls <= 11 and end > start for _, cls, start, end in rows)


def test_label_csv_fixture_round_trip() -> None:
    text = labels_csv([(1, 100, 200), (11, 300, 900)]).decode()
    assert [r[1:] for r in parse_labels(text, "x.csv")] == [(1, 100, 200), (11, 300, 900)]
