"""The data layer against a full disk, bad config values, its build lock and other OS errors (issue 18):
one line, exit 2, nothing stale left behind. Crafted archives are in test_trust_data.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data_trust_utils import BIN, cli, gesture_args, one_line, refused, trials
from event_fixtures import write_gesture
from mlfsnn.cli.data import compose, main
from mlfsnn.data import DataError, build_datasets, check_dataset_config
from mlfsnn.errors import ConfigError
from mlfsnn.runner.config import validate
from runner_utils import TINY, compose_cfg, mounted_tmpfs

# --- 6. a full disk while the frame cache is written ---------------------------------------------


FULL_DISK = """
import errno, os, sys
real, cache = os.write, sys.argv[1]
def full(fd, data):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if target.startswith(cache):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(fd, data)
os.write = full
sys.argv = ["snn-train", *sys.argv[2:]]
from mlfsnn.cli.train import main
main()
"""


def test_full_disk_is_one_line_and_snn_train_leaves_no_run_directory(tmp_path) -> None:
    write_gesture(tmp_path / "g", trials(), archive=True)
    cache = tmp_path / "cache"
    model = [a for a in TINY if a.startswith(("model.", "trainer.", "logger."))]
    args = [*gesture_args(tmp_path / "g", cache), *model, "hydra.run.dir=run"]
    proc = cli([sys.executable, "-c", FULL_DISK, str(cache), *args], tmp_path)
    one_line(proc, f"cannot write the frame cache in {cache / 'dvs_gesture'}", "No space left on device")
    assert not (tmp_path / "run").exists()
    assert list((cache / "dvs_gesture").iterdir()) == []  # the temporary folder is gone
    assert main(["prepare", *gesture_args(tmp_path / "g", cache)]) == 0  # nothing stale in the way


def test_full_tmpfs_cache_is_one_line_and_a_later_build_is_whole(tmp_path, capsys) -> None:
    with mounted_tmpfs(tmp_path / "small", "3m") as mnt:
        write_gesture(tmp_path / "g", trials())
        args = [*gesture_args(tmp_path / "g", mnt), "dataset.size=128"]  # 9 x 512 kB raw frames > 3 MB
        refused(["prepare", *args], capsys, f"in {mnt / 'dvs_gesture'}", "No space left on device")
        assert [p.name for p in (mnt / "dvs_gesture").iterdir()] == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        assert main(["prepare", *args]) == 0 and "built in" in capsys.readouterr().out
        _, _, info = build_datasets(compose(args).dataset, 4)
        assert info.train_samples == 6


# --- 7. config values refused before Hydra creates anything ------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ([*TINY[:2], *TINY[3:], "dataset.size=0"], ["dataset.size=0 is invalid", "1..256"]),
        (["dataset=cifar10", "dataset.root=FILE"], ["dataset.root=", "is invalid", "is a file"]),
        (
            ["+experiment=dvs_gesture", "dataset.root=DATA", "dataset.bin_ms=nan"],
            ["dataset.bin_ms=nan is invalid"],
        ),
        (
            ["+experiment=cifar10_dvs", "dataset.root=DATA", "dataset.cache_dir=FILE/c"],
            ["dataset.cache_dir=", "above it is a file"],
        ),
    ],
)
def test_bad_dataset_values_are_refused_before_the_run_directory(tmp_path, args, needles) -> None:
    cwd, files = tmp_path / "cwd", tmp_path / "files"
    cwd.mkdir()
    files.mkdir()
    (files / "f").write_text("a file")
    args = [a.replace("FILE", str(files / "f")).replace("DATA", str(files)) for a in args]
    proc = cli([str(BIN / "snn-train"), *args], cwd)
    line = one_line(proc, *needles)
    assert "run directory" not in proc.stderr and list(cwd.iterdir()) == [], line


BAD = {
    "digits": ["size=0", "size=1000", "test_fraction=0", "test_fraction=1", "test_fraction=0.001",
               "split_seed=abc", "split_seed=-1", "subset=0"],
    "cifar10": ["root=FILE", "download=maybe", "augment=1", "val_fraction=0.95"],
    "dvs_gesture": ["source=nope", "root=FILE", "cache_dir=FILE", "framing=frames", "bin_ms=0", "bin_ms=nan",
                    "bin_ms=1e300", "uniform_split=x", "origin=end", "size=129", "divisor=0", "divisor=abc",
                    "transpose=yes", "clip=0", "binarize=2", "flip_prob=2", "max_shift=-1", "skip_corrupt=1",
                    "num_workers_prepare=-2", "root=" + "x" * 300, "root=null", "size=16 divisor=3.04"],
    "cifar10_dvs": ["split=random", "split_seed=abc", "test_fraction=0", "test_fraction=1.5",
                    "window_origin=start", "window_origin=absolute framing=uniform"],
}  # fmt: skip


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in BAD.items() for v in vs])
def test_every_static_dataset_check_is_one_config_error(tmp_path, name, value) -> None:
    (tmp_path / "f").write_text("a file")
    overrides = [
        f"dataset={name}",
        *(f"dataset.{v}" for v in value.replace("FILE", str(tmp_path / "f")).split(" ")),
    ]
    cfg = compose_cfg(overrides)
    key = value.split("=")[0]
    for check in (lambda: validate(cfg), lambda: check_dataset_config(cfg.dataset)):
        with pytest.raises(ConfigError) as exc:
            check()
        assert str(exc.value).startswith("dataset.") and "\n" not in str(exc.value), exc.value
        assert f"dataset.{key}" in str(exc.value), exc.value
    validate(compose_cfg([f"dataset={name}"]))  # the shipped defaults pass


# --- 8. the build lock ---------------------------------------------------------------------------


def test_a_lock_link_is_refused_and_its_target_untouched(tmp_path, capsys) -> None:
    write_gesture(tmp_path / "g", trials())
    args = gesture_args(tmp_path / "g", tmp_path / "cache")
    from mlfsnn.cli.data import _dataset

    entry = _dataset(compose(args)).plan().entry
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (tmp_path / "cache" / ".locks").mkdir(parents=True)
    lock = tmp_path / "cache" / ".locks" / f"dvs_gesture-{entry.name}.lock"
    lock.symlink_to(victim)
    refused(["prepare", *args], capsys, str(lock), "symbolic link")
    assert victim.read_bytes() == b"precious\n" and not entry.exists()


def test_prepare_that_waited_says_it_reused_the_entry_another_process_built(
    tmp_path, capsys, monkeypatch
) -> None:
    import fcntl

    write_gesture(tmp_path / "g", trials())
    assert main(["prepare", *gesture_args(tmp_path / "g", tmp_path / "a")]) == 0  # the other process's entry
    args = gesture_args(tmp_path / "g", tmp_path / "b")
    entry = Path(
        build_datasets(compose(gesture_args(tmp_path / "g", tmp_path / "a")).dataset, 4)[2].extra["cache"]
    )
    (tmp_path / "b" / ".locks").mkdir(parents=True)
    capsys.readouterr()
    with open(tmp_path / "b" / ".locks" / f"dvs_gesture-{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is building this entry
        waiting, real = threading.Event(), fcntl.flock
        monkeypatch.setattr(fcntl, "flock", lambda fd, op: (waiting.set(), real(fd, op))[1])
        waiter = threading.Thread(target=main, args=(["prepare", *args],))
        waiter.start()
        assert waiting.wait(60)  # it found no entry and now waits for the lock
        time.sleep(0.2)
        shutil.copytree(entry, tmp_path / "b" / "dvs_gesture" / entry.name)
    waiter.join(60)
    out = capsys.readouterr().out
    assert "reused the entry another process built meanwhile" in out and "built in" not in out


# --- 9. other OSErrors on data paths --------------------------------------------------------------


def test_other_os_errors_on_data_paths_are_one_line(tmp_path, capsys, monkeypatch) -> None:
    folder = write_gesture(tmp_path / "g", trials())
    args = gesture_args(tmp_path / "g", tmp_path / "cache")
    long_root = tmp_path / ("x" * 300)  # ENAMETOOLONG, past the static check (build_datasets directly)
    with pytest.raises(DataError) as exc:
        build_datasets(compose([*args, f"dataset.root={long_root}"]).dataset, 4)
    assert "File name too long" in str(exc.value) and "\n" not in str(exc.value)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ".locks").write_text("a file where the lock folder goes")
    refused(["prepare", *args], capsys, str(tmp_path / "cache" / ".locks"), "Not a directory")
    (tmp_path / "cache" / ".locks").unlink()
    (folder / "user02_led.aedat").unlink()
    (folder / "user02_led.aedat").mkdir()  # a folder where a recording should be
    refused(["prepare", *args], capsys, str(folder / "user02_led.aedat"), "is a folder, not a regular file")
    (folder / "user02_led.aedat").rmdir()

    real = Path.iterdir

    def denied(self: Path):  # root ignores permission bits: refuse the way a mount or an ACL would
        if self == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    refused(["info", *args], capsys, f"cannot use {folder}", "Permission denied")
