"""Frame-cache entries that were damaged after they were written, and directories that cannot be used."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from event_fixtures import gesture_trial, write_gesture
from mlfsnn.cli._common import EXIT_USER_ERROR
from mlfsnn.cli.data import compose, main
from mlfsnn.data import DataError, build_datasets
from mlfsnn.data.events import integrity
from mlfsnn.data.events.cache import CachedFrames, CacheWriter, load_meta, locked_build

ROWS = [(1, 10_000, 30_000), (5, 40_000, 60_000), (11, 70_000, 90_000)]


@pytest.fixture
def args(tmp_path: Path) -> list[str]:
    """Overrides of a small DVS-Gesture release (an extracted folder) and its cache."""
    trials = {f"user{u:02d}_led": (gesture_trial(ROWS, u), ROWS) for u in (1, 2, 25)}
    write_gesture(tmp_path / "g", trials)
    return [
        "dataset=dvs_gesture",
        f"dataset.root={tmp_path / 'g'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "time_steps=4",
        "dataset.bin_ms=1",
    ]


def build(overrides: list[str]) -> Path:
    """Build (or open) the entry and return its folder."""
    cfg = compose(overrides)
    _, _, info = build_datasets(cfg.dataset, cfg.time_steps)
    return Path(info.extra["cache"])


def snapshot(entry: Path) -> dict[str, np.ndarray]:
    return {f.name: np.load(f) for f in sorted(entry.glob("*.npy"))}


def damage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "damaged" in r.getMessage()
    ]


def no_leftovers(entry: Path) -> bool:
    return [p.name for p in entry.parent.iterdir()] == [entry.name]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line on stderr (progress bars also write there, on carriage-return lines)."""
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if "error:" in line]
    assert len(lines) == 1 and err.endswith("\n") and lines[0] == err.split("\n")[-2], err
    return lines[0][lines[0].index("error:") :]


def refuse_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlfsnn.data.events.dvs_gesture as dg

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("recordings parsed")

    monkeypatch.setattr(dg, "read_aedat31_polarity", refuse)


def test_entry_records_size_and_sha256_of_every_data_file(tmp_path) -> None:
    w = CacheWriter(tmp_path / "e", {}, (1, 2, 2, 2))
    for split in ("train", "test"):
        w.add(split, np.ones((1, 2, 2, 2), np.int64), 1, "a")
    files = w.commit({})["files"]
    assert sorted(files) == ["test_frames.npy", "test_labels.npy", "train_frames.npy", "train_labels.npy"]
    for name, rec in files.items():
        data = (tmp_path / "e" / name).read_bytes()
        assert rec == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert integrity.check_entry(tmp_path / "e", load_meta(tmp_path / "e")) is None


def test_truncated_frames_are_detected_and_rebuilt(args, caplog) -> None:
    entry = build(args)
    before = snapshot(entry)
    frames = entry / "train_frames.npy"
    size = frames.stat().st_size
    os.truncate(frames, size // 2)
    with caplog.at_level(logging.WARNING):
        assert build(args) == entry
    [warning] = damage_warnings(caplog)
    assert f"{entry}/train_frames.npy: {size // 2} bytes, expected {size}" in warning
    after = snapshot(entry)
    assert after.keys() == before.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert no_leftovers(entry)
    caplog.clear()
    build(args)  # the rebuilt entry is intact
    assert not damage_warnings(caplog)


def test_flipped_byte_is_detected_and_rebuilt(args, caplog) -> None:
    entry = build(args)
    before = snapshot(entry)
    frames = entry / "test_frames.npy"
    data = bytearray(frames.read_bytes())
    data[len(data) // 2] ^= 0x01
    frames.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        build(args)
    [warning] = damage_warnings(caplog)
    assert f"{entry}/test_frames.npy: sha256" in warning
    after = snapshot(entry)
    assert all(np.array_equal(before[k], after[k]) for k in before) and no_leftovers(entry)


def test_damaged_entry_without_its_source_data_is_a_one_line_error(args, tmp_path, capsys) -> None:
    recordings = sorted((tmp_path / "g" / "DvsGesture").glob("*.aedat"))
    good = {rec: rec.read_bytes() for rec in recordings}

    def damage_entry_and_source() -> Path:
        entry = build(args)
        (entry / "train_frames.npy").write_bytes(b"\x93NUMPY")
        # the recordings are still listed (same names and sizes, so the same entry) but unreadable
        for rec in recordings:
            rec.write_bytes(bytes(rec.stat().st_size))
        return entry

    entry = damage_entry_and_source()
    with pytest.raises(DataError) as exc:
        build(args)
    msg = str(exc.value)
    assert msg.startswith(f"damaged cache entry {entry}/train_frames.npy: 6 bytes, expected ")
    assert "\n" not in msg and "user01_led.aedat" in msg and "run snn-data prepare" in msg
    assert not entry.exists()  # a damaged entry is never served
    for rec, data in good.items():
        rec.write_bytes(data)
    entry = damage_entry_and_source()
    with pytest.raises(SystemExit) as code:
        main(["prepare", *args])
    assert code.value.code == EXIT_USER_ERROR == 2
    assert error_line(capsys).startswith(f"error: damaged cache entry {entry}/train_frames.npy: ")
    # the source data gone altogether: the entry cannot even be located (its key hashes the inputs)
    for f in (tmp_path / "g" / "DvsGesture").iterdir():
        f.unlink()
    with pytest.raises(SystemExit) as code:
        main(["prepare", *args])
    assert code.value.code == 2 and "DVS-Gesture (IBM release) not found" in error_line(capsys)


def test_entries_without_checksums_are_checked_structurally(args, caplog, monkeypatch) -> None:
    entry = build(args)
    meta = json.loads((entry / "meta.json").read_text())
    del meta["files"], meta["build"]  # as the previous version wrote it
    (entry / "meta.json").write_text(json.dumps(meta))
    refuse_parsing(monkeypatch)
    with caplog.at_level(logging.WARNING):
        build(args)  # opened as it is, nothing rebuilt
    assert not damage_warnings(caplog) and "files" not in load_meta(entry)
    monkeypatch.undo()
    os.truncate(entry / "test_labels.npy", 100)
    with caplog.at_level(logging.WARNING):
        build(args)
    [warning] = damage_warnings(caplog)
    assert "test_labels.npy: not a readable .npy file" in warning and "files" in load_meta(entry)


def test_unreadable_meta_is_rebuilt(args, caplog) -> None:
    entry = build(args)
    (entry / "meta.json").write_text('{"version": 1, "spl')
    with caplog.at_level(logging.WARNING):
        build(args)
    [warning] = damage_warnings(caplog)
    assert "meta.json: unreadable" in warning and load_meta(entry) is not None and no_leftovers(entry)


def test_an_entry_rebuilt_by_another_process_is_not_rebuilt_again(tmp_path, caplog) -> None:
    import fcntl

    def write(entry: Path, value: int) -> None:
        w = CacheWriter(entry, {}, (1, 2, 2, 2))
        for split in ("train", "test"):
            w.add(split, np.full((1, 2, 2, 2), value, np.int64), 1, "a")
        w.commit({})

    entry = tmp_path / "cache" / "dvs_gesture" / "abc123"
    write(entry, 1)
    os.truncate(entry / "train_frames.npy", 10)
    results: list[tuple] = []
    (tmp_path / "cache" / ".locks").mkdir()
    with open(tmp_path / "cache" / ".locks" / f"dvs_gesture-{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is rebuilding the damaged entry
        waiter = threading.Thread(target=lambda: results.append(locked_build(entry, lambda: 1 / 0)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and entry.exists()  # it waits, and only the lock holder discards
        os.rename(entry, tmp_path / "old")
        write(entry, 2)
    waiter.join(10)
    assert results[0][0] == entry and CachedFrames(entry, "train")[0][0].max() == 2
    assert not damage_warnings(caplog)


# --- directories that cannot be used ---------------------------------------------------------------


def test_cache_dir_that_is_a_file(args, tmp_path, capsys) -> None:
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    for cache_dir, where in ((blocker, f"{blocker}"), (blocker / "sub", f"{blocker / 'sub'}: {blocker}")):
        with pytest.raises(DataError) as exc:
            build([*args, f"paths.cache_dir={cache_dir}"])
        assert str(exc.value).startswith(f"dataset.cache_dir: {where} is a file, not a directory")
        assert "\n" not in str(exc.value)
    with pytest.raises(SystemExit) as code:
        main(["prepare", *args, f"dataset.cache_dir={blocker}"])
    assert code.value.code == 2 and str(blocker) in error_line(capsys)


def test_read_only_cache_dir(args, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o500)
    if os.geteuid() == 0:  # root writes through permission bits: make os.access see them
        real = os.access
        monkeypatch.setattr(integrity.os, "access", lambda p, mode: real(p, mode) and Path(p) != cache)
    refuse_parsing(monkeypatch)  # the error comes before any recording is read
    try:
        with pytest.raises(DataError) as exc:
            build([*args, f"paths.cache_dir={cache}"])
        assert str(exc.value).startswith(f"dataset.cache_dir: {cache} is read-only") and "\n" not in str(
            exc.value
        )
        assert not any(cache.iterdir())
    finally:
        cache.chmod(0o700)


def test_cache_dir_where_writing_fails(args, tmp_path, monkeypatch) -> None:
    def read_only_mount(*a: object, **k: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(integrity.tempfile, "TemporaryFile", read_only_mount)
    with pytest.raises(DataError, match=r"^dataset\.cache_dir: .* is not writable \(Read-only file system\)"):
        build(args)


def test_complete_entry_in_a_read_only_cache_is_still_read(args, monkeypatch) -> None:
    entry = build(args)
    monkeypatch.setattr(integrity.os, "access", lambda p, mode: False)
    refuse_parsing(monkeypatch)
    assert build(args) == entry
    os.truncate(entry / "test_frames.npy", 10)
    with pytest.raises(DataError) as exc:
        build(args)
    assert str(exc.value).startswith(f"damaged cache entry {entry}/test_frames.npy: 10 bytes, expected ")
    assert ", and it cannot be rebuilt: dataset.cache_dir: " in str(exc.value)
    assert "is read-only" in str(exc.value) and "\n" not in str(exc.value)


def test_root_that_is_a_file(args, tmp_path, capsys) -> None:
    archive = tmp_path / "DvsGesture.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError) as exc:
        build([*args, f"dataset.root={archive}"])
    assert str(exc.value).startswith(f"dataset.root: {archive} is a file, not a directory; set dataset.root")
    with pytest.raises(SystemExit) as code:
        main(["prepare", *args, f"dataset.root={archive}"])
    assert code.value.code == 2 and f"perhaps {tmp_path}" in error_line(capsys)
