"""Transfers against a real, misbehaving HTTP server (tests/data/conftest.py): every test ends with the
file verified in place, or absent with its ``.part`` kept; every failure is one DataError line."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from mlfsnn.data import transfer
from mlfsnn.data.download import download_files
from mlfsnn.data.sources import RemoteFile
from mlfsnn.data.transfer import Policy, fetch_file
from mlfsnn.errors import DataError
from runner_utils import mounted_tmpfs

FAST = Policy(timeout_s=2.0, retries=2, backoff_s=0.01, progress=False)
REFUSED = "http://127.0.0.1:1/x.zip"  # nothing listens on port 1


def zip_bytes(n: int = 300_000, seed: int = 0) -> bytes:
    """A real zip: two stored members of random bytes (incompressible, so the size is known)."""
    rnd = __import__("random").Random(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("cls/a.aedat", rnd.randbytes(n // 2))
        zf.writestr("cls/b.aedat", rnd.randbytes(n - n // 2))
    return buf.getvalue()


def tar_gz_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def remote(name: str, body: bytes, *urls: str, md5: str | None = "auto") -> RemoteFile:
    return RemoteFile(name, urls, hashlib.md5(body).hexdigest() if md5 == "auto" else md5)


def notes() -> tuple[list[str], object]:
    said: list[str] = []
    return said, said.append


def test_cut_transfer_resumes_with_only_the_remainder(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    http_server.cut = 100_000
    url = http_server.put("/a.zip", body, "cut", "cut")
    file = remote("a.zip", body, url)
    # one try only: the cut ends the call, the part stays for the next
    with pytest.raises(DataError) as e:
        fetch_file(file, tmp_path, [url], Policy(retries=0, backoff_s=0.01, progress=False))
    msg = str(e.value)
    assert "\n" not in msg and "closed after 100000 of 300" in msg
    assert f"100000 bytes kept in {tmp_path / 'a.zip.part'} (the same command resumes)" in msg
    assert (tmp_path / "a.zip.part").read_bytes() == body[:100_000] and not (tmp_path / "a.zip").exists()
    # the next call: a Range request from byte 100000, cut again at 200000, retried, finished
    path, how = fetch_file(file, tmp_path, [url], FAST)
    assert path.read_bytes() == body and how == f"downloaded from {url}"
    assert [r for _, r in http_server.requests] == [None, "bytes=100000-", "bytes=200000-"]
    assert http_server.served["/a.zip"] == len(body)  # every byte once: nothing fetched twice
    assert not (tmp_path / "a.zip.part").exists()
    assert fetch_file(file, tmp_path, [REFUSED], FAST) == (path, "present")  # verified, no connection


def test_server_without_range_support_restarts_cleanly(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    url = http_server.put("/a.zip", body, "norange")
    (tmp_path / "a.zip.part").write_bytes(b"garbage from an older copy")
    said, say = notes()
    path, _ = fetch_file(remote("a.zip", body, url), tmp_path, [url], FAST, say)
    assert path.read_bytes() == body and not (tmp_path / "a.zip.part").exists()
    assert http_server.requests == [("/a.zip", "bytes=26-")] and http_server.served["/a.zip"] == len(body)
    assert any("ignores ranges (status 200): a.zip.part starts again from byte 0" in s for s in said)


def test_5xx_is_retried_with_backoff(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    url = http_server.put("/a.zip", body, "500", "500")
    said, say = notes()
    path, _ = fetch_file(remote("a.zip", body, url), tmp_path, [url], FAST, say)
    assert path.read_bytes() == body and len(http_server.requests) == 3
    assert said == [
        f"{url}: HTTP 500 Internal Server Error; trying again in 0.01 s (0 bytes kept in a.zip.part)",
        f"{url}: HTTP 500 Internal Server Error; trying again in 0.02 s (0 bytes kept in a.zip.part)",
    ]


def test_403_names_the_url_and_the_next_one_tried(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    first = http_server.put("/m/a.zip", body, "403")
    second = http_server.put("/a.zip", body)
    said, say = notes()
    path, how = fetch_file(remote("a.zip", body, second), tmp_path, [first, second], FAST, say)
    assert path.read_bytes() == body and how == f"downloaded from {second}"
    assert said == [f"{first}: HTTP 403 Forbidden; trying {second}"]
    http_server.modes["/a.zip"] = ["403"]
    http_server.modes["/m/a.zip"] = ["403"]
    with pytest.raises(DataError) as e:
        fetch_file(remote("b.zip", body, second), tmp_path, [first, second], FAST, say)
    msg = str(e.value)
    assert msg.startswith(f"cannot download b.zip into {tmp_path}: {first}: HTTP 403 Forbidden; {second}: ")
    assert "\n" not in msg and not list(tmp_path.glob("b.zip*"))


def test_404_on_the_mirror_then_the_origin(tmp_path: Path, http_server, monkeypatch) -> None:
    body = zip_bytes()
    origin = http_server.put("/origin/a.zip", body)
    monkeypatch.setenv("MLFSNN_DATA_MIRROR", f"{http_server.base}/mirror")
    said, say = notes()
    [(path, how)] = download_files("cifar10_dvs", [remote("a.zip", body, origin)], tmp_path, FAST, say)
    mirror = f"{http_server.base}/mirror/cifar10_dvs/a.zip"
    assert path.read_bytes() == body and how == f"downloaded from {origin}"
    assert said == [f"{mirror}: HTTP 404 Not Found; trying {origin}"]
    # a working mirror is tried first: the origin is not asked
    http_server.put("/mirror/cifar10_dvs/b.zip", body)
    [(_, how)] = download_files("cifar10_dvs", [remote("b.zip", body, origin)], tmp_path, FAST, say)
    assert how == "downloaded from " + f"{http_server.base}/mirror/cifar10_dvs/b.zip"
    assert [p for p, _ in http_server.requests] == [
        "/mirror/cifar10_dvs/a.zip",
        "/origin/a.zip",
        "/mirror/cifar10_dvs/b.zip",
    ]


@pytest.mark.parametrize("mode", ["html", "html-octet"])
def test_html_page_with_status_200_is_named_and_never_written(tmp_path: Path, http_server, mode) -> None:
    body = zip_bytes()
    url = http_server.put("/ndownloader/files/1", body, mode, mode, mode)
    with pytest.raises(DataError) as e:
        fetch_file(remote("a.zip", body, url), tmp_path, [url], FAST)
    msg = str(e.value)
    assert "an HTML page instead of the zip" in msg and "bot-challenge" in msg and "\n" not in msg
    assert ("Content-Type text/html" in msg) == (mode == "html") and "<!DOCTYPE html>" in msg
    assert not list(tmp_path.glob("a.zip*"))  # not a byte of the page kept


def test_stall_past_the_read_timeout_is_retried_then_one_line(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    http_server.cut = 50_000
    url = http_server.put("/a.zip", body, "stall")
    policy = Policy(timeout_s=0.3, retries=2, backoff_s=0.01, progress=False)
    t0 = time.perf_counter()
    path, _ = fetch_file(remote("a.zip", body, url), tmp_path, [url], policy)
    assert path.read_bytes() == body and time.perf_counter() - t0 < 5
    assert http_server.served["/a.zip"] == len(body)  # the 50000 bytes before the stall were kept
    # a try that brings bytes starts the count again; three stalls without a byte end it
    other = http_server.put("/b.zip", body, "stall", "stall0", "stall0", "stall0")
    with pytest.raises(DataError) as e:
        fetch_file(remote("b.zip", body, other), tmp_path, [other], policy)
    msg = str(e.value)
    assert f"{other}: the transfer broke off (timed out) (3 tries in a row)" in msg and "\n" not in msg
    assert (tmp_path / "b.zip.part").read_bytes() == body[:50_000] and not (tmp_path / "b.zip").exists()


def test_wrong_checksum_is_kept_aside_and_never_used(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    changed = body[:-1] + bytes([body[-1] ^ 1])  # same size, one bit off
    bad = http_server.put("/mirror/a.zip", changed)
    good = http_server.put("/a.zip", body)
    said, say = notes()
    path, how = fetch_file(remote("a.zip", body, good), tmp_path, [bad, good], FAST, say)
    assert path.read_bytes() == body and how == f"downloaded from {good}"
    [aside] = tmp_path.glob("a.zip.corrupt-*")
    assert aside.read_bytes() == changed and "never used" in said[0]
    with pytest.raises(DataError) as e:
        fetch_file(remote("b.zip", body, bad), tmp_path, [bad], FAST, say)
    assert f"is not the published {hashlib.md5(body).hexdigest()}; kept aside as b.zip.corrupt-" in str(
        e.value
    )
    assert not (tmp_path / "b.zip").exists() and len(list(tmp_path.glob("b.zip.corrupt-*"))) == 1


def test_a_file_of_the_wrong_size_is_refused_before_a_byte_is_written(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    url = http_server.put("/a.zip", body[:1000])
    file = RemoteFile("a.zip", (url,), hashlib.md5(body).hexdigest(), len(body))
    with pytest.raises(DataError, match=rf"{url}: it offers 1000 bytes, not the published {len(body)}"):
        fetch_file(file, tmp_path, [url], FAST)
    assert not list(tmp_path.glob("a.zip*"))  # by its Content-Length: no part, nothing kept aside


def test_no_published_checksum_uses_the_archive_and_records_sha256(tmp_path: Path, http_server) -> None:
    body = tar_gz_bytes({"d/x.bin": os.urandom(50_000)})
    url = http_server.put("/a.tar.gz", body)
    file = remote("a.tar.gz", body, url, md5=None)
    path, _ = fetch_file(file, tmp_path, [url], FAST)
    record = (tmp_path / "a.tar.gz.sha256").read_text()
    assert record == f"{hashlib.sha256(body).hexdigest()}  a.tar.gz\n"
    path.write_bytes(body[:-8] + b"\0" * 8)  # the gzip trailer damaged: "it changed since"
    said, say = notes()
    assert fetch_file(file, tmp_path, [url], FAST, say)[0].read_bytes() == body
    assert "recorded at the first download" in said[0] and len(list(tmp_path.glob("a.tar.gz.corrupt-*"))) == 1
    truncated = http_server.put("/t.tar.gz", body[: len(body) // 2])
    with pytest.raises(
        DataError, match=r"not an intact tar\.gz archive .*kept aside as t\.tar\.gz\.corrupt-"
    ):
        fetch_file(remote("t.tar.gz", body, truncated, md5=None), tmp_path, [truncated], FAST)


def test_two_downloads_of_one_file_share_one_transfer(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    url = http_server.put("/a.zip", body, "gate")
    file = remote("a.zip", body, url)
    said: list[str] = []
    waiting = threading.Event()

    def say(msg: str) -> None:
        said.append(msg)
        waiting.set()

    results: list[tuple[Path, str]] = []
    patient = Policy(timeout_s=30, retries=0, progress=False)
    first = threading.Thread(target=lambda: results.append(fetch_file(file, tmp_path, [url], patient, say)))
    first.start()
    while not http_server.requests:  # the first holds the lock and its transfer is under way
        time.sleep(0.01)
    second = threading.Thread(target=lambda: results.append(fetch_file(file, tmp_path, [url], patient, say)))
    second.start()
    assert waiting.wait(5) and "is downloading a.zip" in said[0] and "waiting" in said[0]
    http_server.gate.set()
    first.join(10)
    second.join(10)
    assert sorted(how for _, how in results) == [f"downloaded from {url}", "present"]
    assert http_server.served["/a.zip"] == len(body) and len(http_server.requests) == 1
    assert (tmp_path / "a.zip").read_bytes() == body


def test_a_lock_held_by_another_process_is_waited_for(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    url = http_server.put("/a.zip", body)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(tmp_path / '.a.zip.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True); time.sleep(0.5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    said, say = notes()
    path, _ = fetch_file(remote("a.zip", body, url), tmp_path, [url], FAST, say)
    assert holder.wait(5) == 0 and path.read_bytes() == body
    assert said == [f"another process (pid {holder.pid}) is downloading a.zip into {tmp_path}; waiting"]


def test_offline_is_one_line_saying_where_to_put_the_file(tmp_path: Path) -> None:
    file = RemoteFile("a.zip", (REFUSED,), "0" * 32)
    with pytest.raises(DataError) as e:
        fetch_file(file, tmp_path / "d", [REFUSED], FAST)
    msg = str(e.value)
    assert msg.startswith("offline: cannot reach 127.0.0.1:1 (Connection refused")
    assert msg.endswith(f"put a.zip in {tmp_path / 'd'}, from {REFUSED}") and "\n" not in msg


def test_injected_full_disk_keeps_the_part(tmp_path: Path, http_server, monkeypatch) -> None:
    body = zip_bytes()
    url = http_server.put("/a.zip", body)
    real, written = os.write, [0]

    def write(fd: int, data) -> int:
        if written[0] >= 120_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, data[: 120_000 - written[0]])
        written[0] += n
        return n

    monkeypatch.setattr(transfer.os, "write", write)
    with pytest.raises(DataError) as e:
        fetch_file(remote("a.zip", body, url), tmp_path, [url], FAST)
    monkeypatch.undo()
    part = tmp_path / "a.zip.part"
    assert str(e.value) == (
        f"disk full: {part}: No space left on device; the 120000 bytes downloaded so far stay in "
        "a.zip.part: free space and run the same command again to resume"
    )
    assert part.read_bytes() == body[:120_000] and not (tmp_path / "a.zip").exists()
    path, _ = fetch_file(remote("a.zip", body, url), tmp_path, [url], FAST)
    assert path.read_bytes() == body and http_server.requests[-1] == ("/a.zip", "bytes=120000-")


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    with mounted_tmpfs(tmp_path / "small", "1m") as where:  # elsewhere the injected ENOSPC test covers it
        yield where


def test_real_full_disk_then_resume_after_freeing_space(small_tmpfs: Path, http_server) -> None:
    body = zip_bytes(900_000)
    url = http_server.put("/a.zip", body)
    (small_tmpfs / "filler").write_bytes(b"\0" * 600_000)
    file = remote("a.zip", body, url)
    with pytest.raises(
        DataError, match=r"^disk full: .*a\.zip\.part: No space left on device; the \d+ bytes"
    ):
        fetch_file(file, small_tmpfs / "d", [url], FAST)
    kept = (small_tmpfs / "d" / "a.zip.part").read_bytes()
    assert 0 < len(kept) < len(body) and body.startswith(kept) and not (small_tmpfs / "d" / "a.zip").exists()
    (small_tmpfs / "filler").unlink()
    served = http_server.served["/a.zip"]
    path, _ = fetch_file(file, small_tmpfs / "d", [url], FAST)
    assert path.read_bytes() == body and http_server.served["/a.zip"] - served == len(body) - len(kept)


def test_a_link_planted_at_the_part_is_refused_not_written_through(tmp_path: Path, http_server) -> None:
    body = zip_bytes()
    url = http_server.put("/a.zip", body)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.zip.part").symlink_to(victim)
    with pytest.raises(DataError, match=r"^a\.zip: .*a\.zip\.part is a symbolic link \(to .*victim\)"):
        fetch_file(remote("a.zip", body, url), tmp_path / "d", [url], FAST)
    assert victim.read_bytes() == b"keep me"
