"""``snn-data download`` and ``dataset.download=true``: the source tables, the mirror, files landing
where the dataset code looks, one-line failures; against a local server (tests/data/conftest.py),
never the internet. Transfer behaviour itself: test_download_http.py."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest

from event_fixtures import write_cifar10_dvs, write_tonic_gesture
from mlfsnn.cli.data import main
from mlfsnn.data import DataError, build_datasets, sources, transfer
from mlfsnn.data.download import fetch
from mlfsnn.data.sources import SOURCES, RemoteFile, Source, find_source, mirror_urls
from mlfsnn.errors import ConfigError
from runner_utils import compose_cfg

REFUSED = "http://127.0.0.1:1"  # nothing listens on port 1
FAST = transfer.Policy(timeout_s=5, retries=1, backoff_s=0.01, progress=False)


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "DEFAULT_POLICY", FAST)
    monkeypatch.delenv("MLFSNN_DATA_MIRROR", raising=False)


def serve(monkeypatch, http_server, dataset: str, source: str, files: dict[str, bytes]) -> Source:
    """Put ``files`` on the mirror as ``<dataset>/<name>`` and make them the table of ``source``
    (same names and folders, these md5s; the origin unreachable, so only the mirror can answer)."""
    old = SOURCES[(dataset, source)]
    folders = {f.name: f.folder for f in old.files}
    table = []
    for name, body in files.items():
        http_server.put(f"/{dataset}/{name}", body)
        md5 = hashlib.md5(body).hexdigest()
        table.append(RemoteFile(name, (f"{REFUSED}/{name}",), md5, len(body), folders.get(name, "")))
    new = Source(dataset, source, tuple(table), old.page, old.manual, old.note)
    monkeypatch.setitem(SOURCES, (dataset, source), new)
    monkeypatch.setenv("MLFSNN_DATA_MIRROR", http_server.base)
    return new


def tar_gz(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=arcname)
    return buf.getvalue()


def test_tables_match_installed_tonic_and_torchvision() -> None:
    import tonic.datasets
    from torchvision.datasets import CIFAR10

    def figshare_id(url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[1]

    g = tonic.datasets.DVSGesture
    train, test = find_source("dvs_gesture", "tonic").files
    assert (train.name, train.md5, train.folder) == (g.train_filename, g.train_md5, "DVSGesture")
    assert (test.name, test.md5) == (g.test_filename, g.test_md5)
    assert figshare_id(train.urls[0]) == figshare_id(g.train_url)
    assert figshare_id(test.urls[0]) == figshare_id(g.test_url)
    c = tonic.datasets.CIFAR10DVS
    [cz] = find_source("cifar10_dvs", "tonic").files
    assert (cz.name, cz.md5, cz.folder, figshare_id(cz.urls[0])) == (
        c.filename,
        c.file_md5,
        "CIFAR10DVS",
        "38023437",
    )
    [tgz] = find_source("cifar10", None).files
    assert (tgz.urls[0], tgz.name, tgz.md5) == (CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5)
    zips = find_source("cifar10_dvs", None).files
    assert [z.name for z in zips] == [f"{c}.zip" for c in c.classes]
    for src in SOURCES.values():
        for f in src.files:
            assert all(u.startswith("https://") and "ndownloader" not in u for u in f.urls), f
            assert all("api.figshare.com/v2/file/download/" in u for u in f.urls if "figshare" in u)


def test_mirror_addresses_and_bad_values() -> None:
    [f] = find_source("cifar10", None).files
    got = mirror_urls("cifar10", f, "http://a/m/ file:///srv/data")
    assert got == [
        "http://a/m/cifar10/cifar-10-python.tar.gz",
        "file:///srv/data/cifar10/cifar-10-python.tar.gz",
        *f.urls,
    ]
    with pytest.raises(ConfigError, match=r"MLFSNN_DATA_MIRROR='ftp://x' is not a base URL"):
        mirror_urls("cifar10", f, "ftp://x")
    with pytest.raises(
        ConfigError, match=r"source='foo' is not a source of dvs_gesture: expected one of tonic, ibm"
    ):
        find_source("dvs_gesture", "foo")


def test_a_mirror_on_a_shared_disk(tmp_path: Path, monkeypatch) -> None:
    from mlfsnn.data.download import download_files

    body = b"PK\x03\x04" + b"zip" * 100
    (tmp_path / "m" / "cifar10_dvs").mkdir(parents=True)
    (tmp_path / "m" / "cifar10_dvs" / "a.zip").write_bytes(body)
    monkeypatch.setenv("MLFSNN_DATA_MIRROR", f"file://{tmp_path}/m")
    md5 = hashlib.md5(body).hexdigest()
    files = [RemoteFile("a.zip", (f"{REFUSED}/a.zip",), md5), RemoteFile("b.zip", (f"{REFUSED}/b.zip",), md5)]
    with pytest.raises(DataError) as e:
        download_files("cifar10_dvs", files, tmp_path / "d", FAST, lambda _: None)
    assert (tmp_path / "d" / "a.zip").read_bytes() == body  # the first file came from the mirror
    mirror_b = f"file://{tmp_path}/m/cifar10_dvs/b.zip"
    assert f"{mirror_b}: No such file or directory; {REFUSED}/b.zip: Connection refused" in str(e.value)


def test_download_cifar10_dvs_lands_where_prepare_looks(tmp_path, http_server, monkeypatch, capsys) -> None:
    from mlfsnn.data.events.cifar10_dvs import locate_original

    made = write_cifar10_dvs(tmp_path / "made", per_class=2, zipped=True)
    bodies = {p.name: p.read_bytes() for p in sorted(made.glob("*.zip"))}
    serve(monkeypatch, http_server, "cifar10_dvs", "original", bodies)
    root = tmp_path / "data"
    assert main(["download", "dataset=cifar10_dvs", f"dataset.root={root}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cifar10_dvs: source=original, root={root} (https://figshare.com/articles/")
    assert f"{root / 'truck.zip'}: downloaded from {http_server.base}/cifar10_dvs/truck.zip" in out
    assert "md5 verified" in out and f"next: snn-data prepare dataset=cifar10_dvs dataset.root={root}" in out
    assert {kind for kind, _ in locate_original(root).values()} == {"zip"}
    assert all((root / n).read_bytes() == b for n, b in bodies.items())
    assert main(["download", "dataset=cifar10_dvs", f"dataset.root={root}"]) == 0
    assert out.count("downloaded from") == 10 and capsys.readouterr().out.count(": present,") == 10
    assert [p for p, _ in http_server.requests].count(
        "/cifar10_dvs/truck.zip"
    ) == 1  # the rerun asked nothing


def test_download_failure_is_one_error_line_and_exit_2(tmp_path, http_server, monkeypatch, capsys) -> None:
    src = serve(
        monkeypatch, http_server, "cifar10_dvs", "tonic", {"CIFAR10DVS.zip": b"PK\x03\x04" + b"x" * 99}
    )
    http_server.files.clear()  # the mirror answers 404, the origin refuses
    with pytest.raises(SystemExit) as e:
        main(["download", "dataset=cifar10_dvs", "source=tonic", f"dataset.root={tmp_path}"])
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert e.value.code == 2 and "Traceback" not in err
    assert line.startswith(f"error: cannot download CIFAR10DVS.zip into {tmp_path / 'CIFAR10DVS'}: ")
    assert (
        f"{http_server.base}/cifar10_dvs/CIFAR10DVS.zip: HTTP 404 Not Found; {src.files[0].urls[0]}: " in line
    )
    assert f"note: {http_server.base}/cifar10_dvs/CIFAR10DVS.zip: HTTP 404 Not Found; trying {REFUSED}" in err


def test_ibm_gesture_is_one_line_saying_where_to_get_it(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["download", "dataset=dvs_gesture", f"dataset.root={tmp_path}"])
    line = capsys.readouterr().err.strip()
    assert line.startswith(
        "error: dvs_gesture source=ibm: IBM publishes DvsGesture.tar.gz through a Box folder"
    )
    assert f"put it in {tmp_path}" in line and "snn-data download dataset=dvs_gesture source=tonic" in line
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "user01_led.aedat").write_bytes(b"#!AER-DAT3.1\r\n")
    archive = tar_gz(tmp_path / "made", "DvsGesture")
    (tmp_path / "DvsGesture.tar.gz").write_bytes(archive)  # put there by hand: checked by its own format
    assert main(["download", "dataset=dvs_gesture", f"dataset.root={tmp_path}"]) == 0
    assert "gzip and tar intact, sha256 in DvsGesture.tar.gz.sha256" in capsys.readouterr().out
    assert (tmp_path / "DvsGesture.tar.gz.sha256").read_text().split()[0] == hashlib.sha256(
        archive
    ).hexdigest()
    (tmp_path / "DvsGesture").mkdir()
    (tmp_path / "DvsGesture" / "user01_led.aedat").write_bytes(b"")
    assert main(["download", "dataset=dvs_gesture", f"dataset.root={tmp_path}"]) == 0
    assert "found: the extracted folder" in capsys.readouterr().out


def cifar10_release(folder: Path) -> dict[str, str]:
    """The 7 files of ``cifar-10-batches-py`` (tiny); their md5s, for torchvision's check."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "labels": [int(v) for v in rng.integers(0, 10, 4)],
            "data": rng.integers(0, 256, (4, 3072), np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2)
    )
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_cifar10_download_true_fetches_extracts_and_loads(tmp_path, http_server, monkeypatch) -> None:
    from torchvision.datasets import CIFAR10

    md5 = cifar10_release(tmp_path / "made" / "cifar-10-batches-py")
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    archive = tar_gz(tmp_path / "made" / "cifar-10-batches-py", "cifar-10-batches-py")
    serve(monkeypatch, http_server, "cifar10", "toronto", {"cifar-10-python.tar.gz": archive})
    cfg = compose_cfg([f"dataset.root={tmp_path / 'c10'}", "dataset.augment=false"])
    _, _, info = build_datasets(cfg.dataset, 4)
    assert (info.train_samples, info.test_samples) == (20, 4)
    assert (tmp_path / "c10" / "cifar-10-python.tar.gz").read_bytes() == archive
    assert not list((tmp_path / "c10").glob(".cifar-10-batches-py.*"))  # the temp folder is gone


def test_cifar10_offline_download_is_one_data_error(tmp_path: Path) -> None:
    cfg = compose_cfg([f"dataset.root={tmp_path / 'c10'}", "dataset.download=true"])
    before = socket.getdefaulttimeout()
    old = SOURCES[("cifar10", "toronto")].files[0]
    dead = RemoteFile(old.name, (f"{REFUSED}/{old.name}",), old.md5, old.size)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SOURCES, ("cifar10", "toronto"), Source("cifar10", "toronto", (dead,), "p"))
        with pytest.raises(DataError) as e:
            build_datasets(cfg.dataset, 4)
    msg = str(e.value)
    assert msg.startswith(
        f"CIFAR10 not found at {tmp_path / 'c10' / 'cifar-10-batches-py'} and the download failed"
    )
    assert (
        f"offline: cannot reach 127.0.0.1:1 (Connection refused (2 tries in a row)); put {old.name} in" in msg
    )
    assert msg.endswith("to try mlfsnn offline run: snn-train +experiment=digits") and "\n" not in msg
    assert socket.getdefaulttimeout() == before


def test_tonic_gesture_download_true_uses_our_download(tmp_path, http_server, monkeypatch) -> None:
    import tonic.datasets

    made = write_tonic_gesture(tmp_path / "made", {"train": range(1, 11), "test": range(24, 34)})
    bodies = {f"{d}.tar.gz": tar_gz(made / d, d) for d in ("ibmGestureTrain", "ibmGestureTest")}
    serve(monkeypatch, http_server, "dvs_gesture", "tonic", bodies)
    # tonic checks the archive against its own md5 before it extracts (never downloads: it is there)
    monkeypatch.setattr(
        tonic.datasets.DVSGesture, "train_md5", hashlib.md5(bodies["ibmGestureTrain.tar.gz"]).hexdigest()
    )
    monkeypatch.setattr(
        tonic.datasets.DVSGesture, "test_md5", hashlib.md5(bodies["ibmGestureTest.tar.gz"]).hexdigest()
    )
    monkeypatch.setattr(tonic.datasets.DVSGesture, "train_url", f"{REFUSED}/tonic-must-not-download")
    cfg = compose_cfg(
        [
            "dataset=dvs_gesture",
            "dataset.source=tonic",
            f"dataset.root={tmp_path / 'g'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "dataset.bin_ms=20",
        ]
    )
    train, test, _ = build_datasets(cfg.dataset, 4)
    assert (len(train), len(test)) == (110, 110)
    loc = tmp_path / "g" / "DVSGesture"
    assert (loc / "ibmGestureTest.tar.gz").read_bytes() == bodies["ibmGestureTest.tar.gz"]
    assert len(list((loc / "ibmGestureTrain").glob("*/*.npy"))) == 110  # extracted by tonic
    asked = [p for p, _ in http_server.requests]
    assert asked == ["/dvs_gesture/ibmGestureTrain.tar.gz", "/dvs_gesture/ibmGestureTest.tar.gz"]
    # an archive present but not extracted, dataset.download=false: verified, extracted, no network
    shutil.rmtree(loc / "ibmGestureTest")
    cfg.dataset.download = False
    cfg.dataset.bin_ms = 10  # another cache entry: the recordings are read again
    _, test, _ = build_datasets(cfg.dataset, 4)
    assert len(test) == 110 and len(http_server.requests) == 2


def test_tonic_gesture_offline_download_is_one_data_error(tmp_path: Path, monkeypatch) -> None:
    dead = tuple(
        RemoteFile(f.name, (f"{REFUSED}/{f.name}",), f.md5, f.size, f.folder)
        for f in sources.SOURCES[("dvs_gesture", "tonic")].files
    )
    monkeypatch.setitem(SOURCES, ("dvs_gesture", "tonic"), Source("dvs_gesture", "tonic", dead, "p"))
    cfg = compose_cfg(
        [
            "dataset=dvs_gesture",
            "dataset.source=tonic",
            f"dataset.root={tmp_path / 'g'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ]
    )
    with pytest.raises(DataError) as e:
        build_datasets(cfg.dataset, 4)
    loc = tmp_path / "g" / "DVSGesture"
    assert str(e.value).startswith("offline: cannot reach 127.0.0.1:1 (Connection refused")
    assert str(e.value).endswith(
        f"put ibmGestureTrain.tar.gz in {loc}, from {REFUSED}/ibmGestureTrain.tar.gz"
    )
    assert socket.getdefaulttimeout() is None


def test_fetch_keeps_its_old_signature(tmp_path: Path, http_server) -> None:
    body = b"PK\x03\x04" + b"payload" * 100
    url = http_server.put("/a.zip", body)
    dest = tmp_path / "x" / "a.zip"
    assert fetch(url, dest, hashlib.md5(body).hexdigest(), timeout=5) == dest and dest.read_bytes() == body
    with pytest.raises(DataError, match=r"md5 .* is not the published 0123"):
        fetch(url, tmp_path / "y" / "a.zip", "0123")
