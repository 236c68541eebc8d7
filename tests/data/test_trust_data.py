"""Crafted and broken inputs of the data layer (issue 18): one line, exit 2, bounded, nothing touched.

Every archive here is built by the test in the release's real layout, then damaged the way an
attacker or a failing disk would: bombs, lying headers, links to devices, repeated names,
encrypted members, a full disk, a planted lock link.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from event_fixtures import gesture_trial, labels_csv, write_cifar10_dvs, write_gesture
from mlfsnn.cli.data import compose, main
from mlfsnn.data import DataError, build_datasets, check_dataset_config
from mlfsnn.errors import ConfigError
from mlfsnn.runner.config import validate
from runner_utils import TINY, compose_cfg

BIN = Path(sys.executable).parent
ROWS = [(1, 10_000, 30_000), (5, 40_000, 60_000), (11, 70_000, 90_000)]
GiB = 1 << 30
# Run snn-data with the address space capped a little above what the imports already take: reading
# a bomb whole would fail with MemoryError (a traceback), the bounded readers never get near it.
LIMITED = """
import resource, sys
import tonic.transforms, tqdm  # noqa: F401  (loaded before the cap, as any run has them)
from mlfsnn.cli.data import compose, main
compose([])
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]), vm + int(sys.argv[1])))
sys.exit(main(sys.argv[2:]))
"""


def trials(users=(1, 2, 25)) -> dict:
    return {f"user{u:02d}_led": (gesture_trial(ROWS, u), ROWS) for u in users}


def gesture_args(root: Path, cache: Path) -> list[str]:
    return [
        "dataset=dvs_gesture",
        f"dataset.root={root}",
        f"paths.cache_dir={cache}",
        "time_steps=4",
        "dataset.bin_ms=1",
    ]


def cifar_args(root: Path, cache: Path) -> list[str]:
    return ["dataset=cifar10_dvs", f"dataset.root={root}", f"paths.cache_dir={cache}", "time_steps=4"]


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert all(n in errors[0] for n in needles), errors[0]
    return errors[0]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """``snn-data argv`` in this process: exit 2 and exactly one ``error:`` line holding ``needles``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [line[line.index("error:") :] for line in err.split("\n") if "error:" in line]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def limited(argv: list[str], headroom: int = 512 << 20) -> subprocess.CompletedProcess:
    """``snn-data argv`` in a process whose address space ends ``headroom`` above its imports."""
    t0 = time.monotonic()
    cmd = [sys.executable, "-c", LIMITED, str(headroom), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert time.monotonic() - t0 < 200  # bounded in time too: nothing is inflated or read for ever
    return proc


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def add_zeros(archive: Path, member: str, n: int) -> None:
    """Append ``member``, ``n`` zero bytes deflated (about 1000:1), to the zip ``archive``."""
    chunk = bytes(16 << 20)
    with (
        zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
        zf.open(member, "w") as fh,
    ):
        for _ in range(n // len(chunk)):
            fh.write(chunk)


def patch_zip(
    path: Path, member: str, *, flags: int = 0, method: int | None = None, size: int | None = None
) -> None:
    """Rewrite fields of ``member``'s local and central headers (what zipfile itself never writes)."""
    data, name = bytearray(path.read_bytes()), member.encode()
    # signature, flag, method, uncompressed size, name length, name offsets of the two headers
    for sig, f_off, m_off, s_off, n_off, name_off in (
        (b"PK\3\4", 6, 8, 22, 26, 30),
        (b"PK\1\2", 8, 10, 24, 28, 46),
    ):
        pos = data.find(sig)
        while pos >= 0:
            n = struct.unpack_from("<H", data, pos + n_off)[0]
            if data[pos + name_off : pos + name_off + n] == name:
                struct.pack_into(
                    "<H", data, pos + f_off, struct.unpack_from("<H", data, pos + f_off)[0] | flags
                )
                if method is not None:
                    struct.pack_into("<H", data, pos + m_off, method)
                if size is not None:
                    struct.pack_into("<I", data, pos + s_off, size)
            pos = data.find(sig, pos + 4)
    path.write_bytes(data)


# --- 1. bombs: a member's declared size is checked before inflating, and reading is bounded ---------


def test_zip_bomb_is_refused_before_inflating_under_a_memory_cap(tmp_path, monkeypatch, capsys) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10, zipped=True)
    add_zeros(root / "dog.zip", "dog/cifar10_dog_10.aedat", GiB)  # 4.7 MB on disk: the reviewer's bomb
    assert (root / "dog.zip").stat().st_size < 10 << 20
    proc = limited(["prepare", *cifar_args(root, tmp_path / "cache")])
    one_line(
        proc,
        f"{root / 'dog.zip'}:dog/cifar10_dog_10.aedat",
        "holds 1073741824 bytes",
        "MLFSNN_MAX_RECORDING_BYTES",
    )
    # the cap is a setting: lowered, it refuses an ordinary recording of the fixture too
    (root / "dog.zip").unlink()
    write_cifar10_dvs(tmp_path / "small", per_class=10, zipped=True)
    monkeypatch.setenv("MLFSNN_MAX_RECORDING_BYTES", "100")
    refused(
        ["prepare", *cifar_args(tmp_path / "small", tmp_path / "cache")], capsys, "more than the 100 bytes"
    )


def test_zip_member_holding_more_than_its_header_declares_is_stopped(tmp_path) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10, zipped=True)
    add_zeros(root / "dog.zip", "dog/cifar10_dog_10.aedat", 256 << 20)
    patch_zip(root / "dog.zip", "dog/cifar10_dog_10.aedat", size=100)  # the header lies: 100 bytes
    proc = limited(["prepare", *cifar_args(root, tmp_path / "cache")], headroom=256 << 20)
    one_line(proc, "dog.zip:dog/cifar10_dog_10.aedat", "unreadable zip member")


def test_tar_bomb_is_refused_before_inflating_under_a_memory_cap(tmp_path) -> None:
    class Zeros(io.RawIOBase):
        def __init__(self, n: int) -> None:
            self.left = n

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    root = tmp_path / "g"
    root.mkdir()
    with tarfile.open(root / "DvsGesture.tar.gz", "w:gz", compresslevel=1) as tar:
        bomb = tarfile.TarInfo("DvsGesture/user01_led.aedat")
        bomb.size = GiB
        tar.addfile(bomb, io.BufferedReader(Zeros(GiB)))
        labels = tarfile.TarInfo("DvsGesture/user01_led_labels.csv")
        labels.size = len(labels_csv(ROWS))
        tar.addfile(labels, io.BytesIO(labels_csv(ROWS)))
    proc = limited(["prepare", *gesture_args(root, tmp_path / "cache")])
    one_line(proc, f"{root / 'DvsGesture.tar.gz'}:DvsGesture/user01_led.aedat", "holds 1073741824 bytes")
    assert not any((tmp_path / "cache" / "dvs_gesture").iterdir())  # no entry, no temporary folder


# --- 2. links to devices and FIFOs in an extracted folder ----------------------------------------


@pytest.mark.parametrize("plant", ["link_to_dev_zero", "fifo"])
def test_device_links_and_fifos_in_a_folder_are_refused_not_read(tmp_path, plant) -> None:
    folder = write_gesture(tmp_path / "g", trials())
    victim = folder / ("user02_led.aedat" if plant == "link_to_dev_zero" else "user02_led_labels.csv")
    victim.unlink()
    if plant == "link_to_dev_zero":
        victim.symlink_to("/dev/zero")
    else:
        os.mkfifo(victim)  # no writer: a plain open would wait for ever
    args = gesture_args(tmp_path / "g", tmp_path / "cache")
    what = "a device, FIFO or socket, not a regular file"
    one_line(limited(["prepare", *args]), str(victim), what, "skip_corrupt")
    if plant == "fifo":  # snn-data info reads the labels files too
        one_line(limited(["info", *args]), str(victim), what)


# --- 3. a recording twice: in a zip, in a folder, in a tar ------------------------------------------


def test_repeated_recordings_are_refused(tmp_path, capsys) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10, zipped=True)
    with zipfile.ZipFile(root / "cat.zip", "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("cat/cifar10_cat_3.aedat", b"a second member of the same name")
    args = [*cifar_args(root, tmp_path / "cache"), "dataset.split=shuffled"]
    refused(["prepare", *args], capsys, f"{root / 'cat.zip'}", "cifar10_cat_3.aedat", "more than once")
    folder = write_cifar10_dvs(tmp_path / "f", per_class=10)
    (folder / "cat" / "copy").mkdir()
    shutil.copy(folder / "cat" / "cifar10_cat_3.aedat", folder / "cat" / "copy")
    refused(["prepare", *cifar_args(folder, tmp_path / "cache")], capsys, "cifar10_cat_3.aedat", "copy/")
    archive = write_gesture(tmp_path / "g", trials(), archive=True)
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    members["copy/user01_led.aedat"] = members["DvsGesture/user01_led.aedat"]  # extracted twice, re-tarred
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    refused(
        ["prepare", *gesture_args(tmp_path / "g", tmp_path / "cache")],
        capsys,
        str(archive),
        "user01_led.aedat occurs twice",
    )
    assert not any((tmp_path / "cache" / "dvs_gesture").iterdir())


# --- 4. zip members Python cannot read -----------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "why"),
    [
        ({"flags": 0x1}, "is encrypted; extract it with its password and point dataset.root at the folder"),
        (
            {"method": 9},
            "uses Deflate64, which Python's zipfile cannot read; re-zip with deflate or extract it",
        ),
    ],
)
def test_encrypted_and_deflate64_members_are_one_line(tmp_path, capsys, patch, why) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10, zipped=True)
    patch_zip(root / "frog.zip", "frog/cifar10_frog_7.aedat", **patch)
    refused(
        ["prepare", *cifar_args(root, tmp_path / "cache")],
        capsys,
        f"{root / 'frog.zip'}:frog/cifar10_frog_7.aedat",
        why,
    )
    assert main(["info", *cifar_args(root, tmp_path / "cache")]) == 1  # info reports it, no traceback
    assert why in capsys.readouterr().out


# --- 5. trial lists that are not text ----------------------------------------------------------------


@pytest.mark.parametrize("archive", [False, True])
def test_non_utf8_trial_list_is_one_line(tmp_path, capsys, archive) -> None:
    folder = write_gesture(tmp_path / "g", trials())  # written as a folder first, archived below
    (folder / "trials_to_train.txt").write_bytes(b"user01_led.aedat\r\n\xff\xfeuser02_led.aedat\r\n")
    if archive:
        with tarfile.open(tmp_path / "g" / "DvsGesture.tar.gz", "w:gz") as tar:
            tar.add(folder, "DvsGesture")
        shutil.rmtree(folder)
    args = gesture_args(tmp_path / "g", tmp_path / "cache")
    refused(["prepare", *args], capsys, "trials_to_train.txt", "not UTF-8 text (byte 0xff at offset 18)")
    refused(["info", *args], capsys, "trials_to_train.txt", "not UTF-8")


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
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        write_gesture(tmp_path / "g", trials())
        args = [*gesture_args(tmp_path / "g", mnt), "dataset.size=128"]  # 9 x 512 kB raw frames > 3 MB
        refused(["prepare", *args], capsys, f"in {mnt / 'dvs_gesture'}", "No space left on device")
        assert [p.name for p in (mnt / "dvs_gesture").iterdir()] == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        assert main(["prepare", *args]) == 0 and "built in" in capsys.readouterr().out
        _, _, info = build_datasets(compose(args).dataset, 4)
        assert info.train_samples == 6
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


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
