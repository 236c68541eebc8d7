"""Archive downloads: the timeout is the call's own (never the process-wide socket default), a
failed or corrupt download leaves nothing behind and becomes one DataError line."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlfsnn.data import DataError, build_datasets
from mlfsnn.data.download import fetch
from runner_utils import compose_cfg

REFUSED = "http://127.0.0.1:1/archive.tar.gz"  # port 1: nothing listens, the connection is refused


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server for ``tmp_path / "srv"``; yields its base URL."""
    (tmp_path / "srv").mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(tmp_path / "srv"), **kwargs)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_downloads_verifies_and_reuses(tmp_path: Path, server: str) -> None:
    payload = b"archive bytes " * 1000
    (tmp_path / "srv" / "a.tar.gz").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "data" / "a.tar.gz"
    before = socket.getdefaulttimeout()
    assert fetch(f"{server}/a.tar.gz", dest, md5, timeout=5) == dest
    assert dest.read_bytes() == payload and socket.getdefaulttimeout() == before
    assert fetch(REFUSED, dest, md5) == dest  # already there with that checksum: no connection


def test_fetch_failures_leave_nothing(tmp_path: Path, server: str) -> None:
    (tmp_path / "srv" / "a.tar.gz").write_bytes(b"changed upstream")
    dest = tmp_path / "data" / "a.tar.gz"
    with pytest.raises(DataError, match="does not have md5 0123"):
        fetch(f"{server}/a.tar.gz", dest, "0123")
    with pytest.raises(urllib.error.URLError):
        fetch(REFUSED, dest, None, timeout=5)
    assert list((tmp_path / "data").iterdir()) == []


def test_cifar10_offline_download_is_one_data_error(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", REFUSED)
    cfg = compose_cfg([f"dataset.root={tmp_path / 'c10'}", "dataset.download=true"])
    before = socket.getdefaulttimeout()
    match = r"CIFAR10 not found at .*cifar-10-batches-py and the download failed"
    with pytest.raises(DataError, match=match) as e:
        build_datasets(cfg.dataset, 4)
    assert "\n" not in str(e.value) and socket.getdefaulttimeout() == before


def test_tonic_gesture_offline_download_is_one_data_error(tmp_path: Path, monkeypatch) -> None:
    import tonic.datasets

    monkeypatch.setattr(tonic.datasets.DVSGesture, "train_url", REFUSED)
    monkeypatch.setattr(tonic.datasets.DVSGesture, "test_url", REFUSED)
    cfg = compose_cfg(
        [
            "dataset=dvs_gesture",
            "dataset.source=tonic",
            f"dataset.root={tmp_path / 'g'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ]
    )
    match = r"tonic's DVSGesture: download or extraction into .* failed \(URLError"
    with pytest.raises(DataError, match=match):
        build_datasets(cfg.dataset, 4)
    assert socket.getdefaulttimeout() is None
