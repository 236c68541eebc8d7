"""One file over HTTP without losing a downloaded byte, and nothing half-written taken for data.

* The bytes go to ``<name>.part`` beside the file; a later call resumes it with an HTTP ``Range``
  request (a server that answers 200 instead of 206 ignores ranges: the part starts again cleanly).
* Connection errors, time-outs and 5xx answers are retried with a doubling pause; a try that
  brought bytes resets the count, so a flaky link that drops every few hundred MB still finishes.
  Each connect and each read has its own time-out (the call's, never the process-wide socket
  default, which other threads share), so a stalled transfer fails instead of hanging.
* 403, 404 and other refusals, an HTML page where an archive was expected (figshare's bot
  challenge: by ``Content-Type`` and the first bytes, before anything is written), or the wrong
  first bytes move on to the next URL at once.
* The finished part is verified (size, md5, or without a published checksum the archive's own
  integrity and the sha256 recorded at the first download) before the atomic rename onto the name.
  A part that fails is renamed ``<name>.corrupt-<time>``: kept for a look, never used.
* A lock file (``.<name>.lock``, ``flock``) makes a second process wait for the first and then find
  the verified file; it dies with its process, however that ends.
* Writes go through :mod:`mlfsnn.files` (``O_NOFOLLOW``, regular files with one name): a link
  planted at ``.part`` or at the lock is refused, never written through. A full disk keeps the part.

Python's ``urllib`` does all of it (ranges survive its redirects, the time-out applies to every
socket operation, proxies come from the environment); see README's dependency table for why not
pooch or requests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..files import LinkRefused, ensure_dir, fsync_dir, open_append, open_lock, os_reason
from .sources import RemoteFile
from .verify import corrupt_name, file_problem, not_the_file, record_sha256, verify_existing

__all__ = ["DEFAULT_POLICY", "Policy", "fetch_file", "locked", "note"]

USER_AGENT = "mlfsnn"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Policy:
    timeout_s: float = 60.0  # per connect and per read
    retries: int = 4  # further tries of one URL after fruitless failures in a row
    backoff_s: float = 1.0  # the first pause; doubled after each failure (1+2+4+8 s)
    max_backoff_s: float = 60.0
    progress: bool = True  # a tqdm bar (on a terminal) with size and rate


DEFAULT_POLICY = Policy()  # what a call without a policy gets (snn-data download, dataset.download)


def note(message: str) -> None:
    """The default for ``say``: ``note: ...`` on stderr."""
    print(f"note: {message}", file=sys.stderr, flush=True)


class _Next(Exception):
    """This URL cannot give the file: try the next one. ``reached``: a server answered."""

    def __init__(self, reason: str, reached: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.reached = reason, reached


class _Retry(_Next):
    """Transient: the same URL again after a pause."""


class _Restart(Exception):
    """Start the part again from byte 0 at once (the server ignored or refused the range)."""


class _WriteFailed(Exception):
    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size if path.is_file() and not path.is_symlink() else 0
    except OSError:
        return 0


@contextlib.contextmanager
def locked(dest: Path, say: Callable[[str], None] = note) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``dest``; waits (saying so) while another process holds it."""
    lock = dest.with_name(f".{dest.name}.lock")
    try:
        fd = open_lock(lock)
    except OSError as exc:
        raise DataError(f"cannot open the download lock {lock}: {os_reason(exc, lock)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            say(f"another process (pid {owner}) is downloading {dest.name} into {dest.parent}; waiting")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of ``bytes a-b/total`` or ``bytes */total``; None where absent."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[len("bytes ") :].partition("/")
    start = span.split("-")[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


def _http_error(exc: urllib.error.HTTPError, have: int) -> None:
    """Raise what an error status means for the transfer (416 with a whole part: return)."""
    code, reason = exc.code, f"HTTP {exc.code} {exc.reason}"
    if code == 416 and have:
        _, total = _content_range(exc.headers.get("Content-Range"))
        if total == have:
            return  # the part is already whole
        raise _Restart(f"the server refused the range from byte {have} ({reason})")
    if code >= 500 or code in (408, 429):
        raise _Retry(reason)
    raise _Next(reason)


def _read(response: Any, n: int) -> bytes:
    # read1: whatever one receive brings, so a stall loses nothing already received
    try:
        return response.read1(n) if hasattr(response, "read1") else response.read(n)
    except (OSError, http.client.HTTPException) as exc:
        raise _Retry(f"the transfer broke off ({_why(exc)})") from None


def _truncate(part: Path) -> None:
    try:
        fd = open_append(part)  # never through a link planted at the name
    except OSError as exc:
        raise _WriteFailed(exc) from None
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise _WriteFailed(exc) from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _open(url: str, have: int, policy: Policy) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=policy.timeout_s)
    except urllib.error.HTTPError as exc:
        try:
            _http_error(exc, have)
        finally:
            exc.close()
        return None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if isinstance(getattr(exc, "reason", None), socket.gaierror):  # no DNS: no network, no use waiting
            raise _Next(_why(exc), reached=False) from None
        if url.startswith("file:"):  # a mirror on a shared disk: a missing file is its 404
            raise _Next(_why(exc)) from None
        raise _Retry(_why(exc), reached=False) from None


def _request(url: str, part: Path, file: RemoteFile, policy: Policy, say: Callable[[str], None]) -> None:
    """One request: the rest of the part (or all of it again); raises _Next/_Retry/_Restart."""
    have = _size(part)
    if file.size is not None and have > file.size:
        raise _Restart(f"{part.name} is longer than the file")
    if have and have == file.size:
        return
    response = _open(url, have, policy)
    if response is None:  # 416: the part is whole
        return
    with response:
        status = response.getcode() or 200  # file:// answers without a status
        content_type = response.headers.get("Content-Type", "")
        if status == 206:
            start, _ = _content_range(response.headers.get("Content-Range"))
            if start != have:
                raise _Restart(f"asked for the bytes from {have}, got them from {start}")
        else:
            have = 0  # a whole file: the server ignores ranges, the part starts over
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length and length.isdigit() else file.size
        if file.size is not None and expected != file.size:  # the wrong file: not a byte of it
            raise _Next(f"it offers {expected} bytes, not the published {file.size}")
        first = _read(response, _CHUNK)
        problem = not_the_file(first, content_type, file.kind, fresh=have == 0)
        if problem:
            raise _Next(problem)
        if have == 0 and _size(part):
            say(f"{url} ignores ranges (status {status}): {part.name} starts again from byte 0")
        _receive(response, first, part, have, expected, policy, file.name)


def _receive(
    response: Any, first: bytes, part: Path, have: int, expected: int | None, policy: Policy, name: str
) -> None:
    from tqdm import tqdm

    try:
        fd = open_append(part)
    except OSError as exc:
        raise _WriteFailed(exc) from None
    got = have
    try:
        if have == 0:
            os.ftruncate(fd, 0)
        bar = tqdm(
            total=expected,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=None if policy.progress else True,  # None: only on a terminal
            dynamic_ncols=True,
            mininterval=0.5,
        )
        with bar:
            chunk = first
            while chunk:
                _write(fd, chunk)
                got += len(chunk)
                bar.update(len(chunk))
                chunk = _read(response, _CHUNK)
    finally:
        os.close(fd)
    if expected is not None and got < expected:
        raise _Retry(f"the connection closed after {got} of {expected} bytes")


def _transfer(url: str, part: Path, file: RemoteFile, policy: Policy, say: Callable[[str], None]) -> None:
    """The whole file from ``url`` into ``part``, resuming what is there; raises _Next."""
    failures = restarts = 0
    while True:
        before = _size(part)
        try:
            _request(url, part, file, policy, say)
            return
        except _Restart as exc:
            restarts += 1
            if restarts > 2:
                raise _Next(f"{exc} (again)") from None
            say(f"{url}: {exc}; starting {file.name} again from byte 0")
            _truncate(part)
        except _Retry as exc:
            failures = 0 if _size(part) > before else failures
            if failures >= policy.retries:
                tries = "1 try" if failures == 0 else f"{failures + 1} tries in a row"
                raise _Next(f"{exc.reason} ({tries})", exc.reached) from None
            pause = min(policy.backoff_s * 2**failures, policy.max_backoff_s)
            say(f"{url}: {exc.reason}; trying again in {pause:g} s ({_size(part)} bytes kept in {part.name})")
            time.sleep(pause)
            failures += 1


def _failed(file: RemoteFile, folder: Path, part: Path, failures: list[tuple[str, _Next]]) -> DataError:
    kept = _size(part)
    tail = f"; {kept} bytes kept in {part} (the same command resumes)" if kept else ""
    origin = file.urls[0] if file.urls else failures[0][0]
    if all(not f.reached for _, f in failures):
        hosts = ", ".join(dict.fromkeys(urllib.parse.urlparse(u).netloc or u for u, _ in failures))
        return DataError(
            f"offline: cannot reach {hosts} ({failures[-1][1].reason}); put {file.name} in {folder}, "
            f"from {origin}{tail}"
        )
    tried = "; ".join(f"{u}: {f.reason}" for u, f in failures)
    return DataError(f"cannot download {file.name} into {folder}: {tried}{tail}; or put it there by hand")


def fetch_file(
    file: RemoteFile,
    folder: Path,
    urls: Sequence[str],
    policy: Policy | None = None,
    say: Callable[[str], None] = note,
) -> tuple[Path, str]:
    """``folder / file.name``, verified, downloaded from the first of ``urls`` that gives it unless
    it is already there; also says how (``"present"`` or ``"downloaded from <url>"``).

    Every failure is one :class:`~mlfsnn.errors.DataError` line (offline, refused, an HTML page,
    a checksum mismatch, a full disk); the ``.part`` stays for the next call to resume.
    """
    policy = policy or DEFAULT_POLICY
    dest = folder / file.name
    part = dest.with_name(dest.name + ".part")
    try:
        ensure_dir(folder)
        with locked(dest, say):
            if dest.is_file():
                problem = verify_existing(file, dest)
                if problem is None:
                    return dest, "present"
                aside = corrupt_name(dest, dest.name)
                say(f"{dest}: {problem}; moved aside as {aside.name}, fetching it again")
            return dest, _download(file, dest, part, urls, policy, say)
    except _WriteFailed as failed:
        exc = failed.exc
        if isinstance(exc, LinkRefused):
            raise DataError(f"{file.name}: {exc}") from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(
                f"disk full: {part}: {os_reason(exc, part)}; the {_size(part)} bytes downloaded so far "
                f"stay in {part.name}: free space and run the same command again to resume"
            ) from None
        raise DataError(f"cannot write {part}: {os_reason(exc, part)}; {_size(part)} bytes kept") from None
    except OSError as exc:
        raise DataError(f"cannot download {file.name} into {folder}: {os_reason(exc, dest)}") from None


def _download(
    file: RemoteFile, dest: Path, part: Path, urls: Sequence[str], policy: Policy, say: Callable[[str], None]
) -> str:
    failures: list[tuple[str, _Next]] = []
    for i, url in enumerate(urls):
        then = f"; trying {urls[i + 1]}" if i + 1 < len(urls) else ""
        try:
            _transfer(url, part, file, policy, say)
        except _Next as exc:
            failures.append((url, exc))
            say(f"{url}: {exc.reason}{then}")
            continue
        problem, sha = file_problem(part, file, dest)
        if problem is not None:
            aside = corrupt_name(part, dest.name)
            failures.append((url, _Next(f"{problem}; kept aside as {aside.name}, never used")))
            say(f"{url}: {problem}; kept aside as {aside}, never used{then}")
            continue
        if file.md5 is None:
            record_sha256(dest, sha)
        os.replace(part, dest)
        fsync_dir(dest.parent)
        return f"downloaded from {url}"
    if not failures:
        raise DataError(f"{file.name}: no address to download it from; put it in {dest.parent} by hand")
    raise _failed(file, dest.parent, part, failures)
