"""Fetching a dataset archive with a timeout on this call only.

torchvision's and tonic's downloaders call ``urlopen`` without a timeout, so an unreachable host
hangs the run unless the process-wide socket default is changed, which would also change it for
every other thread (loggers, the launcher). Fetching the archive here first, with the timeout passed
to ``urlopen``, leaves them an archive that is already present and verified, so they never open a
connection themselves.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError
from ..files import atomic_write

__all__ = ["TIMEOUT_S", "fetch", "md5_matches"]

TIMEOUT_S = 60.0  # per connect / read: a stalled transfer fails instead of hanging the run
_USER_AGENT = "mlfsnn"
_CHUNK = 1 << 20


def md5_matches(path: Path, md5: str | None) -> bool:
    """Whether ``path`` is a file and, when ``md5`` is given, has that checksum."""
    if not path.is_file():
        return False
    if md5 is None:
        return True
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest() == md5


def fetch(url: str, dest: Path, md5: str | None = None, timeout: float = TIMEOUT_S) -> Path:
    """``dest``, downloaded from ``url`` unless it is already there with checksum ``md5``.

    Raises ``OSError`` (``urllib.error.URLError``, ``TimeoutError`` ...) when the host cannot be
    reached or stops sending for ``timeout`` seconds, and :class:`~mlfsnn.errors.DataError` when the
    downloaded file does not have checksum ``md5``. Nothing is left at ``dest`` on failure, and a
    previous file there stays until the new one is complete and verified.
    """
    if md5_matches(dest, md5):
        return dest
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.md5()

    def download(out: BinaryIO) -> None:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))

    def verify() -> None:
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(f"{url}: the downloaded file does not have md5 {md5} (truncated or changed)")

    # a temp file beside dest, renamed over it once verified: never written through a link planted
    # at dest, and a failed or corrupt download leaves nothing
    atomic_write(dest, download, before_replace=verify)
    return dest
