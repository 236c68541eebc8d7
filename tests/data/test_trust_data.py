"""Crafted archives and folders of the data layer (issue 18): one line, exit 2, bounded, nothing touched.

Every archive here is built by the test in the release's real layout, then damaged the way an
attacker would: bombs, lying headers, links to devices, repeated names, encrypted members, trial
lists that are not text. A full disk, bad config values, the build lock and other OS errors are in
test_trust_data_disk.py.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from data_trust_utils import ROWS, cifar_args, gesture_args, one_line, refused, trials
from event_fixtures import labels_csv, write_cifar10_dvs, write_gesture
from mlfsnn.cli.data import main

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


def limited(argv: list[str], headroom: int = 512 << 20) -> subprocess.CompletedProcess:
    """``snn-data argv`` in a process whose address space ends ``headroom`` above its imports."""
    t0 = time.monotonic()
    cmd = [sys.executable, "-c", LIMITED, str(headroom), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert time.monotonic() - t0 < 200  # bounded in time too: nothing is inflated or read for ever
    return proc


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
