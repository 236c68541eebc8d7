"""A dataset's files, fetched where the dataset code looks: ``snn-data download`` and
``dataset.download=true`` (CIFAR10, tonic's copies) share this.

Every file of a source's table (:mod:`.sources`) goes through :func:`.transfer.fetch_file`: the
mirrors of ``MLFSNN_DATA_MIRROR`` first, then the file's own URLs; resumable, verified, locked
against a second process. torchvision's and tonic's own downloaders are never reached: they find
the verified archive in place (tonic then only extracts it), so their time-out-less ``urlopen`` and
figshare's dead ``ndownloader`` links never matter. CIFAR10's archive is extracted here, so that
``dataset.download=false`` runs find ``cifar-10-batches-py`` too.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from ..files import ensure_dir, fsync_dir, os_reason
from .sources import RemoteFile, Source, find_source, mirror_urls
from .transfer import Policy, fetch_file, locked, note
from .verify import corrupt_name

__all__ = ["CIFAR10_FOLDER", "TIMEOUT_S", "download_dataset", "download_files", "fetch", "manual_message"]

TIMEOUT_S = 60.0  # per connect / read: a stalled transfer fails instead of hanging the run
CIFAR10_FOLDER = "cifar-10-batches-py"


def fetch(url: str, dest: Path, md5: str | None = None, timeout: float = TIMEOUT_S) -> Path:
    """``dest``, downloaded from ``url`` unless it is already there (with checksum ``md5``)."""
    file = RemoteFile(Path(dest).name, (url,), md5)
    return fetch_file(file, Path(dest).parent, [url], Policy(timeout_s=timeout, progress=False))[0]


def download_files(
    dataset: str,
    files: tuple[RemoteFile, ...] | list[RemoteFile],
    root: Path,
    policy: Policy | None = None,
    say: Callable[[str], None] = note,
) -> list[tuple[Path, str]]:
    """``(path, how)`` of every file, each verified in ``root / file.folder``; one DataError line
    on the first that cannot be had (the ones before it stay, verified)."""
    return [
        fetch_file(f, root / f.folder if f.folder else root, mirror_urls(dataset, f), policy, say)
        for f in files
    ]


def manual_message(source: Source, root: Path) -> str:
    """One line: where to get a source's files by hand, and where to put them."""
    names = ", ".join(f.name for f in source.files)
    return (
        f"{source.dataset} source={source.name}: {source.manual}; get {names} from there and put it "
        f"in {root}, then run snn-data prepare dataset={source.dataset}; or use the downloadable "
        f"copy: snn-data download dataset={source.dataset} source=tonic"
    )


def download_dataset(
    dataset: str,
    root: Path,
    source: str | None = None,
    policy: Policy | None = None,
    say: Callable[[str], None] = note,
    replace_extracted: bool = False,
) -> list[tuple[Path, str]]:
    """Every file of ``dataset``'s ``source`` (None: its default) under ``root``, verified, and
    CIFAR10's archive extracted (``replace_extracted``: a folder already there is moved aside as
    ``cifar-10-batches-py.corrupt-<time>`` and extracted again)."""
    src = find_source(dataset, source)
    if src.manual:
        raise DataError(manual_message(src, root))
    got = download_files(dataset, src.files, root, policy, say)
    if dataset == "cifar10":
        extract_cifar10(got[0][0], root, replace_extracted, say)
    return got


def extract_cifar10(
    archive: Path, root: Path, replace: bool = False, say: Callable[[str], None] = note
) -> bool:
    """Extract ``cifar-10-batches-py`` from the verified ``archive`` unless it is there (``replace``:
    move it aside first); True when it extracted. Into a temp folder, renamed when whole."""
    folder = root / CIFAR10_FOLDER
    with locked(archive, say):  # the archive's lock: one extraction at a time too
        if folder.is_dir() and not replace:
            return False
        tmp = None
        try:
            if folder.exists() or folder.is_symlink():
                aside = corrupt_name(folder, CIFAR10_FOLDER)
                say(f"{folder} is incomplete or corrupt: moved aside as {aside.name}, extracting again")
            tmp = Path(tempfile.mkdtemp(prefix=f".{CIFAR10_FOLDER}.", suffix=".tmp", dir=ensure_dir(root)))
            # filter="data" (Python 3.10.12+/3.11.4+): no absolute paths, links out or devices
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            with tarfile.open(archive, "r:gz") as tf:
                tf.extractall(tmp, **safe)
            if not (tmp / CIFAR10_FOLDER).is_dir():
                raise DataError(f"{archive}: no {CIFAR10_FOLDER}/ inside; not CIFAR10's python archive")
            os.replace(tmp / CIFAR10_FOLDER, folder)
            fsync_dir(root)
        except (OSError, tarfile.TarError) as exc:
            reason = os_reason(exc, folder) if isinstance(exc, OSError) else str(exc)
            raise DataError(
                f"cannot extract {archive.name} into {root}: {reason}; the archive stays there, verified: "
                "fix that and run the same command again"
            ) from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return True
