"""Every file mlfsnn writes is opened here: no symbolic link followed, no reader sees half a file.

A run directory, a sweep directory, a frame cache or a report folder may hold links a user (or
someone else) planted: ``metrics.jsonl -> ~/.bashrc``, ``checkpoints -> /elsewhere``. Writing
through them would change files outside the folder. The rules, one function each:

* files a reader may look at while they change (summaries, reports, plots, checkpoints, caches) are
  written whole to a temp file beside them and renamed over (:func:`atomic_write`): a rename
  replaces a link itself, never its target;
* files that grow (``metrics.jsonl``, ``train.log``) and lock files are opened with ``O_NOFOLLOW``
  and must be regular files with one name (:func:`open_append`, :func:`open_lock`); an append that
  fails half-way (a full disk) is cut back to where it started;
* folders mlfsnn creates inside its own folders must not be links (:func:`ensure_dir`);
* :func:`replace_keeping_previous` keeps the old file as a backup without a moment where neither
  name exists (``link`` then ``replace``).

Refusals are :class:`LinkRefused`, an ``OSError`` (``ELOOP``), so callers that turn ``OSError`` into
a one-line error need nothing new; :func:`os_reason` gives that line's reason.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "LinkRefused",
    "NoFollowFileHandler",
    "append_bytes",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "discard_aside",
    "ensure_dir",
    "fsync_dir",
    "held_lock",
    "open_append",
    "open_lock",
    "os_reason",
    "refuse_links",
    "remove_stale_temporaries",
    "replace_keeping_previous",
    "write_together",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# What ``tempfile.mkstemp`` adds between our prefix ``.<name>.`` and suffix: 8 of these characters.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class LinkRefused(OSError):
    """A path mlfsnn would write is a symbolic link, a hard link or not a regular file/folder."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        super().__init__(errno.ELOOP, what, str(path))

    def __str__(self) -> str:
        return f"{self.filename} {self.strerror}"


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _refused(path: Path) -> LinkRefused:
    return LinkRefused(
        path,
        f"is a symbolic link (to {_link_target(path)}); mlfsnn never writes through links in the folders "
        "it writes: remove the link",
    )


def refuse_links(folder: Path, names: tuple[str, ...] | list[str]) -> None:
    """Raise :class:`LinkRefused` for the first of ``folder/name`` that is a symbolic link."""
    for name in names:
        if (folder / name).is_symlink():
            raise _refused(folder / name)


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) unless it exists; a symbolic link there is refused.

    Only the last component is checked: the folders above it are the user's choice (a run directory
    linked to scratch space is fine), the ones mlfsnn makes inside its own folders are not.
    """
    if path.is_symlink():
        raise _refused(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    path.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():  # planted between the check and mkdir
        raise _refused(path)
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere the only way is to set it and set it back: process-wide, so a file another thread
    # creates in this instant gets mode 0666; acceptable for the rare platforms without /proc.
    old = os.umask(0)
    os.umask(old)
    return old


def os_reason(exc: OSError, path: Path) -> str:
    """``strerror`` (e.g. "No space left on device"), plus the file it concerns when that is neither
    ``path`` nor its temp file (e.g. a parent folder that is a file)."""
    if isinstance(exc, LinkRefused):
        return str(exc)
    reason = exc.strerror or str(exc) or type(exc).__name__
    other = exc.filename is not None and not Path(exc.filename).name.startswith(f".{path.name}.")
    return f"{reason} ({exc.filename})" if other and Path(exc.filename) != path else reason


def atomic_write(
    path: Path, write: Callable[[BinaryIO], None], before_replace: Callable[[], None] | None = None
) -> None:
    """Write ``path`` through ``write(file)``: a temp file in the same folder, fsync, ``os.replace``.

    Readers never see half a file and a crash (or a full disk) leaves the previous one intact. The
    temp file is ``.<name>.<8 random>.tmp`` (see :func:`remove_stale_temporaries`), created with
    ``O_EXCL`` (never through a link) and removed on any error; ``before_replace`` runs just before
    the rename. A link at ``path`` is replaced by the file, its target left alone. Errors propagate
    as they are (``OSError`` for a full disk); callers turn them into one line.
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():  # mkdir would say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            # mkstemp creates 0600 files; outputs should be as readable as any other file written here.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_together(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write every ``(path, data)`` atomically, as one set: every temp file is written and synced
    before the first rename, and the first file is renamed last.

    A full disk fails while a temp file is written, before any rename, so the folder keeps its
    previous set whole; a reader who sees the new first file (a report's ``report.md``) also sees
    the files it describes. Errors propagate as ``OSError`` (the path is the file concerned).
    """
    if not files:
        return
    (path, data), rest = files[0], files[1:]
    try:
        # The later files are written (and renamed) inside before_replace, i.e. once this file's
        # temp copy is safely on disk and before it is renamed into place.
        atomic_write(path, lambda f: f.write(data), before_replace=lambda: write_together(rest))
    except _SetFailed:
        raise
    except OSError as exc:  # named once, by the file that failed (not its temp file)
        raise _SetFailed(exc.errno, exc.strerror or str(exc), str(path)) from exc


class _SetFailed(OSError):
    """A :func:`write_together` failure, ``filename`` the file concerned."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: without it a power loss can bring back the old directory entry."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename still stands
    finally:
        os.close(fd)


def replace_keeping_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path`` (by a hard link) while ``path`` stays in place.

    Called just before ``path`` is replaced by its new version, so a reader finds ``path`` at every
    moment. Where hard links are not allowed (some network filesystems) ``path`` is renamed instead,
    absent for the instant until the new file arrives.
    """
    if not path.is_file() or path.is_symlink():
        return
    tmp = previous.with_name(f".{previous.name}.link{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        os.replace(path, previous)
        return
    os.replace(tmp, previous)


def _open_regular(path: Path, flags: int) -> int:
    """``os.open`` without following a link; the file must be regular and have one name."""
    try:
        # O_NONBLOCK: a FIFO planted under the name must not block the open
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EMLINK and path.is_symlink()):
            raise _refused(path) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "has another name (a hard link)" if stat.S_ISREG(st.st_mode) else "is not a regular file"
        raise LinkRefused(path, f"{what}; mlfsnn writes only files of its own there: remove it")
    os.set_blocking(fd, True)
    return fd


def open_lock(path: Path) -> int:
    """A read-write descriptor on the lock file ``path`` (created if needed), never through a link."""
    return _open_regular(path, os.O_RDWR | os.O_CREAT)


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (waiting for it) for the block."""
    import fcntl

    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def discard_aside(path: Path) -> None:
    """Remove a file or folder; renamed to a hidden name first, so that no one opens it half-deleted
    (a process still reading it keeps its open files) and a failed removal is retried later."""
    import shutil
    import uuid

    if not path.name.startswith("."):
        aside = path.parent / f".{path.name}.tmp-damaged-{uuid.uuid4().hex[:8]}"
        os.rename(path, aside)
        path = aside
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def open_append(path: Path) -> int:
    """An append-only descriptor on ``path`` (created if needed), never through a link."""
    return _open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` whole or not at all: a failed write is cut back to the old end."""
    fd = open_append(path)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


class NoFollowFileHandler(logging.FileHandler):
    """``logging.FileHandler`` that appends without following a link (for ``train.log``)."""

    def _open(self):  # the base class's signature
        fd = open_append(Path(self.baseFilename))
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temp files :func:`atomic_write` leaves in ``folder`` when its writer is killed.

    Only call this while holding the folder's exclusive lock: then no other writer is at work in it,
    so every ``.<name>.<random>.tmp`` there belongs to a dead process. Not recursive, never inside a
    linked folder; returns the files removed.
    """
    if folder.is_symlink() or not folder.is_dir():
        return []
    removed = []
    for entry in _sorted_entries(folder):
        if _TEMP_NAME.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _sorted_entries(folder: Path) -> Iterator[Path]:
    yield from sorted(folder.iterdir())
