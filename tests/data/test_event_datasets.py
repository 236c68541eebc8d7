"""DVS-Gesture and CIFAR10-DVS builders end to end on synthetic archives in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from event_fixtures import (
    aedat2_bytes,
    aedat31_bytes,
    gesture_trial,
    reference_frames,
    write_cifar10_dvs,
    write_gesture,
    write_tonic_gesture,
)
from mlfsnn.cli.data import compose
from mlfsnn.data import DataError, build_datasets

ROWS = [(1, 10_000, 30_000), (5, 40_000, 60_000), (11, 70_000, 90_000)]
# a recording with hand-placed events: (x, y, t, p)
KNOWN = (
    [
        (60, 60, 9_999, 1),
        (0, 0, 10_005, 1),
        (7, 5, 11_004, 0),
        (8, 127, 11_005, 1),
        (127, 127, 14_004, 1),
        (50, 50, 14_005, 1),
        (3, 3, 19_999, 0),
    ]
    + [(4, 4, 30_000, 0)] * 2
    + [(9, 9, 30_500, 1)] * 300
    + [(1, 1, 60_000, 0)]
)
KNOWN_ROWS = [(3, 10_000, 20_000), (3, 30_000, 50_000)]


def gesture_trials() -> dict:
    trials = {
        f"user{u:02d}_{light}": (gesture_trial(ROWS, 10 * u + i), ROWS)
        for u in (1, 2, 24)
        for i, light in enumerate(("led", "lab"))
    }
    trials["user03_natural"] = (KNOWN, KNOWN_ROWS)
    return trials


def build(tmp_path: Path, *overrides: str, dataset: str = "dvs_gesture"):
    cfg = compose(
        [
            f"dataset={dataset}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "time_steps=4",
            "dataset.bin_ms=1",
            *overrides,
        ]
    )
    return build_datasets(cfg.dataset, cfg.time_steps)


def frames_by_id(info) -> dict[str, torch.Tensor]:
    entry = Path(info.extra["cache"])
    meta = json.loads((entry / "meta.json").read_text())
    out = {}
    for split in ("train", "test"):
        frames = np.load(entry / f"{split}_frames.npy")
        ids = meta["splits"][split]["ids"]
        out |= {i: torch.from_numpy(frames[k].astype(np.int64)) for k, i in enumerate(ids)}
    return out


@pytest.fixture
def gesture_root(tmp_path: Path) -> Path:
    write_gesture(tmp_path / "g", gesture_trials())
    return tmp_path / "g"


def test_gesture_split_labels_and_sample_shape(tmp_path, gesture_root) -> None:
    train, test, info = build(tmp_path, f"dataset.root={gesture_root}")
    assert (len(train), len(test)) == (4 * 3 + 2, 2 * 3) == (info.train_samples, info.test_samples)
    assert info.num_classes == 11 and info.in_channels == 2 and info.size == (32, 32) and not info.static
    assert info.source.startswith("ibm:") and "users 1-23 train / 24-29 test" in info.source
    assert sorted(int(y) for _, y in test) == [0, 0, 4, 4, 10, 10]
    x, y = train[0]
    assert x.shape == (4, 2, 32, 32) and x.dtype == torch.float32 and y == 0
    batch, _ = next(iter(DataLoader(train, batch_size=3)))
    assert batch.transpose(0, 1).shape == (4, 3, 2, 32, 32)  # the trainer's [T, B, C, H, W]
    assert info.extra["frames_dtype"] == "uint16" and info.extra["max_count"] == 300  # no 8-bit wrap-around


@pytest.mark.parametrize("origin", ["first_event", "start"])
def test_gesture_frames_are_the_protocol(tmp_path, gesture_root, origin) -> None:
    _, _, info = build(tmp_path, f"dataset.root={gesture_root}", f"dataset.origin={origin}")
    frames = frames_by_id(info)
    first = frames["user03_natural:2"]
    in_row = [e for e in KNOWN if 10_000 <= e[2] < 20_000]
    o = 10_005 if origin == "first_event" else 10_000
    np.testing.assert_array_equal(first.numpy(), reference_frames(in_row, 4, 1000, 4, 32, o))
    if origin == "first_event":
        assert first[0, 1, 0, 0] == 1 and first[0, 0, 1, 1] == 1 and first[1, 1, 31, 2] == 1
        assert first[3, 1, 31, 31] == 1 and first.sum() == 4
    second = frames["user03_natural:3"]
    assert second[0, 0, 1, 1] == 2 and second[0, 1, 2, 2] == 300 and second.sum() == 302
    assert frames["user01_led:2"].sum() > 0


def test_gesture_archive_equals_folder(tmp_path, gesture_root) -> None:
    write_gesture(tmp_path / "t", gesture_trials(), archive=True)
    _, _, folder = build(tmp_path, f"dataset.root={gesture_root}")
    _, _, archive = build(tmp_path, f"dataset.root={tmp_path / 't'}")
    assert folder.extra["cache"] != archive.extra["cache"]
    a, b = frames_by_id(folder), frames_by_id(archive)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gesture_cache_hit_never_parses_and_changes_make_new_entries(
    tmp_path, gesture_root, monkeypatch
) -> None:
    import mlfsnn.data.events.dvs_gesture as dg

    _, _, first = build(tmp_path, f"dataset.root={gesture_root}")

    def refuse(*args, **kwargs):
        raise AssertionError("events parsed on a cache hit")

    monkeypatch.setattr(dg, "read_aedat31_polarity", refuse)
    train, _, again = build(tmp_path, f"dataset.root={gesture_root}", "dataset.subset=3")
    assert again.extra["cache"] == first.extra["cache"] and len(train) == 3
    # load-time options leave the frames, so the entry is reused
    build(tmp_path, f"dataset.root={gesture_root}", "dataset.clip=1", "dataset.augment=true")
    with pytest.raises(AssertionError, match="parsed"):
        build(tmp_path, f"dataset.root={gesture_root}", "dataset.bin_ms=2")
    monkeypatch.undo()
    _, _, other_t = build(tmp_path, f"dataset.root={gesture_root}", "time_steps=3")
    rows = (gesture_root / "DvsGesture" / "user01_led_labels.csv").read_text() + "2,20000,21000\r\n"
    (gesture_root / "DvsGesture" / "user01_led_labels.csv").write_text(rows)
    _, _, changed = build(tmp_path, f"dataset.root={gesture_root}")
    assert len({first.extra["cache"], other_t.extra["cache"], changed.extra["cache"]}) == 3
    assert changed.train_samples == first.train_samples + 1
    assert len(list((tmp_path / "cache" / "dvs_gesture").iterdir())) == 3  # no temporary leftovers


# rows reaching before the recording's first event (9_999) and after its last (60_000)
OVERLAP_ROWS = [(2, 9_000, 10_010), (4, 59_000, 75_000)]


@pytest.mark.parametrize("origin", ["first_event", "start"])
def test_gesture_rows_partly_outside_the_recording_are_framed(tmp_path, gesture_root, origin) -> None:
    csv = gesture_root / "DvsGesture" / "user03_natural_labels.csv"
    csv.write_text(csv.read_text() + "".join(f"{c},{s},{e}\r\n" for c, s, e in OVERLAP_ROWS))
    train, _, info = build(tmp_path, f"dataset.root={gesture_root}", f"dataset.origin={origin}")
    assert len(train) == 14 + 2 and info.extra["skipped_samples"] == 0
    frames = frames_by_id(info)
    for line, (_, start, end) in enumerate(OVERLAP_ROWS, 4):  # header + 2 rows come first
        inside = [e for e in KNOWN if start <= e[2] < end]
        o = min(e[2] for e in inside) if origin == "first_event" else start
        want = reference_frames(inside, 4, 1000, 4, 32, o)
        np.testing.assert_array_equal(frames[f"user03_natural:{line}"].numpy(), want)
    early, late = frames["user03_natural:4"], frames["user03_natural:5"]
    if origin == "first_event":  # by hand: origin 9_999 -> (60, 60) and (0, 0) in bin 0; origin 60_000
        assert early[0, 1, 15, 15] == 1 and early[0, 1, 0, 0] == 1 and early.sum() == 2
        assert late[0, 0, 0, 0] == 1 and late.sum() == 1
    else:  # origin 9_000 and 59_000: one bin later for the events 1 ms or more after the row's start
        assert early[0, 1, 15, 15] == 1 and early[1, 1, 0, 0] == 1 and late[1, 0, 0, 0] == 1


@pytest.mark.parametrize("row", ["4,900000,950000", "4,1000,9000"])
def test_gesture_label_row_without_events(tmp_path, gesture_root, row) -> None:
    csv = gesture_root / "DvsGesture" / "user02_lab_labels.csv"
    csv.write_text(csv.read_text() + row + "\r\n")
    start, end = row.split(",")[1:]
    with pytest.raises(
        DataError, match=rf"_labels\.csv line 5: label \[{start}, {end}\) us holds no event "
    ) as e:
        build(tmp_path, f"dataset.root={gesture_root}")
    assert str(e.value).startswith(f"{csv} line 5:") and "\n" not in str(e.value)
    train, _, info = build(tmp_path, f"dataset.root={gesture_root}", "dataset.skip_corrupt=true")
    assert info.extra["skipped_samples"] == 1 and len(train) == 14
    assert any("skipped 0 corrupt files and 1 samples" in n for n in info.notes)


@pytest.mark.parametrize("bad", ["truncate", "class", "missing_labels"])
def test_gesture_bad_files_stop_preparation(tmp_path, gesture_root, bad) -> None:
    rec = gesture_root / "DvsGesture" / "user02_led.aedat"
    if bad == "truncate":
        rec.write_bytes(rec.read_bytes()[:-5])
        match = rf"{rec}: truncated"
    elif bad == "class":
        csv = gesture_root / "DvsGesture" / "user02_led_labels.csv"
        csv.write_text("class,start,end\n12,10000,30000\n")
        match = r"user02_led_labels\.csv: line 2: class 12 is not in 1\.\.11"
    else:
        (gesture_root / "DvsGesture" / "user02_led_labels.csv").unlink()
        match = r"user02_led_labels\.csv: missing"
    with pytest.raises(DataError, match=match) as exc:
        build(tmp_path, f"dataset.root={gesture_root}")
    assert "\n" not in str(exc.value) and "skip_corrupt" in str(exc.value)
    entries = tmp_path / "cache" / "dvs_gesture"
    assert not entries.exists() or not any(entries.iterdir())
    train, _, info = build(tmp_path, f"dataset.root={gesture_root}", "dataset.skip_corrupt=true")
    assert len(train) == 11 and info.extra["skipped_corrupt_files"] == 1


def test_gesture_missing_and_truncated_archive(tmp_path) -> None:
    with pytest.raises(DataError, match=r"DvsGesture\.tar\.gz .*research\.ibm\.com"):
        build(tmp_path, f"dataset.root={tmp_path / 'nothing'}")
    archive = write_gesture(tmp_path / "t", gesture_trials(), archive=True)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{archive}: unreadable archive"):
        build(tmp_path, f"dataset.root={tmp_path / 't'}")


def test_gesture_trial_lists_are_checked(tmp_path, gesture_root) -> None:
    lists = gesture_root / "DvsGesture" / "trials_to_train.txt"
    lists.write_text("user01_led.aedat\r\nuser01_lab.aedat\r\n")
    _, _, info = build(tmp_path, f"dataset.root={gesture_root}")
    assert any(n.startswith("WARNING trials_to_train.txt differs") for n in info.notes)


def test_gesture_tonic_source(tmp_path) -> None:
    loc = write_tonic_gesture(tmp_path / "tn", {"train": range(1, 11), "test": range(24, 34)})
    train, test, info = build(
        tmp_path, f"dataset.root={tmp_path / 'tn'}", "dataset.source=tonic", "dataset.download=false"
    )
    assert (len(train), len(test)) == (110, 110) and info.source.startswith("tonic:")
    assert any("not the paper's split" in n for n in info.notes)
    raw = np.load(loc / "ibmGestureTrain" / "user01_led" / "7.npy")
    rows = [(int(x), int(y), int(t) * 1000, int(p)) for x, y, p, t in raw]
    rows.sort(key=lambda r: r[2])
    got = frames_by_id(info)[str(Path("ibmGestureTrain") / "user01_led" / "7.npy")]
    np.testing.assert_array_equal(got.numpy(), reference_frames(rows, 4, 1000, 4, 32, rows[0][2]))
    (loc / "ibmGestureTest" / "user24_led" / "3.npy").write_bytes(b"\x93NUMPY broken")
    with pytest.raises(DataError, match=r"user24_led/3\.npy: unreadable"):
        build(tmp_path, f"dataset.root={tmp_path / 'tn'}", "dataset.source=tonic", "dataset.bin_ms=2")
    with pytest.raises(
        DataError, match=r"snn-data download dataset=dvs_gesture source=tonic .*api\.figshare"
    ):
        build(tmp_path, f"dataset.root={tmp_path / 'none'}", "dataset.source=tonic", "dataset.download=false")


def test_gesture_parallel_prepare_matches(tmp_path, gesture_root) -> None:
    _, _, one = build(tmp_path / "a", f"dataset.root={gesture_root}")
    _, _, two = build(tmp_path / "b", f"dataset.root={gesture_root}", "dataset.num_workers_prepare=2")
    a, b = frames_by_id(one), frames_by_id(two)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# --- CIFAR10-DVS ----------------------------------------------------------------------------------

CIFAR_KNOWN = [
    (76, 76, 1_000, 1),
    (0, 127, 1_000, 0),
    (127, 3, 10_999, 1),
    (5, 5, 11_000, 0),
    (9, 9, 100_999, 1),
    (9, 9, 101_000, 1),
    (9, 9, 300_000, 0),
]


def test_cifar_original_split_and_exact_frames(tmp_path) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=12, events={("bird", 11): CIFAR_KNOWN})
    train, test, info = build(
        tmp_path, f"dataset.root={root}", "time_steps=10", "dataset.bin_ms=10", dataset="cifar10_dvs"
    )
    assert (len(train), len(test)) == (110, 10) and info.size == (42, 42) and info.num_classes == 10
    meta = json.loads((Path(info.extra["cache"]) / "meta.json").read_text())
    test_ids = meta["splits"]["test"]["ids"]
    assert all(i.endswith("_11.aedat") for i in test_ids)  # natural order: _11 after _9
    assert [int(y) for _, y in test] == list(range(10))
    f = frames_by_id(info)["bird/cifar10_bird_11.aedat"]
    np.testing.assert_array_equal(f.numpy(), reference_frames(CIFAR_KNOWN, 10, 10_000, 3.04, 42, 1_000, True))
    assert f[0, 1, 24, 24] == 1 and f[0, 0, 0, 41] == 1 and f[0, 1, 41, 0] == 1 and f[1, 0, 1, 1] == 1
    assert f[9, 1, 2, 2] == 1 and f.sum() == 5  # transposed [p, x, y]; t >= first + 100 ms dropped


def test_cifar_zip_equals_folder_and_shuffled_split(tmp_path) -> None:
    folder = write_cifar10_dvs(tmp_path / "f", per_class=10)
    zipped = write_cifar10_dvs(tmp_path / "z", per_class=10, zipped=True)
    _, _, a = build(tmp_path, f"dataset.root={folder}", dataset="cifar10_dvs")
    _, _, b = build(tmp_path, f"dataset.root={zipped}", dataset="cifar10_dvs")
    fa, fb = frames_by_id(a), frames_by_id(b)
    assert all(torch.equal(fa[k], fb[f"{k.split('/')[0]}.zip:{k}"]) for k in fa)
    _, _, s1 = build(
        tmp_path,
        f"dataset.root={folder}",
        "dataset.split=shuffled",
        "dataset.split_seed=3",
        dataset="cifar10_dvs",
    )
    ids = json.loads((Path(s1.extra["cache"]) / "meta.json").read_text())["splits"]["test"]["ids"]
    assert len(ids) == 10 and not all(i.endswith("_9.aedat") for i in ids)
    _, _, s2 = build(
        tmp_path / "again",
        f"dataset.root={folder}",
        "dataset.split=shuffled",
        "dataset.split_seed=3",
        dataset="cifar10_dvs",
    )
    assert json.loads((Path(s2.extra["cache"]) / "meta.json").read_text())["splits"]["test"]["ids"] == ids


def test_cifar_uniform_framing(tmp_path) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10, events={("cat", 0): CIFAR_KNOWN})
    _, _, info = build(
        tmp_path,
        f"dataset.root={root}",
        "dataset.framing=uniform",
        "dataset.size=48",
        "dataset.divisor=null",
        "dataset.transpose=false",
        dataset="cifar10_dvs",
    )
    f = frames_by_id(info)["cat/cifar10_cat_0.aedat"]
    assert f.shape == (4, 2, 48, 48) and f.sum() == len(CIFAR_KNOWN) and f[3, 0, 3, 3] == 1  # 9 * 0.375


def test_cifar_bad_input(tmp_path) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10, zipped=True)
    (root / "truck.zip").unlink()
    with pytest.raises(DataError, match=r"no truck\.zip or truck/ folder .*figshare\.com"):
        build(tmp_path, f"dataset.root={root}", dataset="cifar10_dvs")
    root = write_cifar10_dvs(tmp_path / "d", per_class=10)
    bad = root / "dog" / "cifar10_dog_4.aedat"
    bad.write_bytes(aedat2_bytes([(1, 1, 5, 0)] * 3)[:-2])
    with pytest.raises(DataError, match=rf"{bad}: truncated"):
        build(tmp_path, f"dataset.root={root}", dataset="cifar10_dvs")
    (root / "dog" / "cifar10_dog_5.aedat").write_bytes(aedat31_bytes([(1, 1, 5, 0)]))
    train, test, info = build(
        tmp_path, f"dataset.root={root}", "dataset.skip_corrupt=true", dataset="cifar10_dvs"
    )
    assert info.extra["skipped_corrupt_files"] == 2 and len(train) + len(test) == 98


def test_cifar_tonic_source_needs_aedat(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("aedat") is not None:
        pytest.skip("the aedat package is installed")
    with pytest.raises(DataError, match=r"aedat.*mlfsnn\[aedat4\]"):
        build(tmp_path, f"dataset.root={tmp_path}", "dataset.source=tonic", dataset="cifar10_dvs")


def test_concurrent_preparations_build_an_entry_once(tmp_path: Path) -> None:
    import fcntl
    import json
    import threading

    from mlfsnn.data.events.cache import CACHE_VERSION, locked_build

    entry = tmp_path / "cache" / "dvs_gesture" / "abc123"
    entry.parent.mkdir(parents=True)
    stale = entry.parent / f".{entry.name}.tmp-killed"
    stale.mkdir()
    calls: list[str] = []
    results: list[tuple] = []
    (tmp_path / "cache" / ".locks").mkdir()
    with open(tmp_path / "cache" / ".locks" / f"dvs_gesture-{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is building this entry
        waiter = threading.Thread(
            target=lambda: results.append(locked_build(entry, lambda: calls.append("built")))
        )
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and not calls  # it waits instead of building a second copy
        entry.mkdir()
        (entry / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, "splits": {}}))
    waiter.join(10)
    assert not calls and results[0][0] == entry and results[0][1]["version"] == CACHE_VERSION
    assert stale.exists()  # only a builder holding the lock cleans up
    calls.clear()
    locked_build(tmp_path / "cache" / "dvs_gesture" / "other", lambda: calls.append("built"))
    assert calls == ["built"]


def test_cifar_parallel_zip_prepare_matches(tmp_path) -> None:
    root = write_cifar10_dvs(tmp_path / "z", per_class=10, zipped=True)
    _, _, one = build(tmp_path / "a", f"dataset.root={root}", dataset="cifar10_dvs")
    parallel = "dataset.num_workers_prepare=2"
    _, _, two = build(tmp_path / "b", f"dataset.root={root}", parallel, dataset="cifar10_dvs")
    a, b = frames_by_id(one), frames_by_id(two)
    assert len(a) == 100 and list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
