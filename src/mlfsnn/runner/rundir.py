"""One run directory, one writer, and a finished run is never overwritten by accident.

A directory *holds a run* when it has ``metrics.jsonl``, ``summary.json`` or a checkpoint. Starting
a new run there is refused unless the user says what they want: continue (``trainer.resume=auto``)
or start over (``trainer.overwrite=true``, which moves the old files into ``replaced-<time>/``, so
nothing is deleted). An exclusive ``flock`` on ``<run dir>/.mlfsnn.lock`` keeps a second process
(a requeued job overlapping the old one, two launches into one directory) out while a run is alive;
the kernel drops the lock when the process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "LOCK_NAME",
    "check_writable_dir",
    "claim_run_dir",
    "holds_run",
    "lock_run_dir",
    "move_previous_run",
    "release_run_dir",
    "remove_created",
    "run_files",
]

LOCK_NAME = ".mlfsnn.lock"
# What a run leaves in its directory; Hydra's .hydra/ and the log are moved along on overwrite.
RUN_FILES = ("metrics.jsonl", "summary.json", "eval.json", "checkpoints", "wandb", ".hydra", "train.log")
_HELD: dict[Path, int] = {}


def run_files(run_dir: Path) -> list[str]:
    """The files that make ``run_dir`` a run (empty when it holds none)."""
    found = [n for n in ("metrics.jsonl", "summary.json") if (run_dir / n).is_file()]
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        found += [f"checkpoints/{p.name}" for p in sorted(ckpts.glob("*.pt"))]
    return found


def holds_run(run_dir: Path) -> bool:
    return bool(run_files(run_dir))


def lock_run_dir(run_dir: Path) -> None:
    """Take the run directory's exclusive lock for this process (idempotent), or refuse in one line."""
    key = run_dir.resolve()
    if key in _HELD:
        return
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(f"run directory {run_dir} is not writable: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"cannot lock run directory {run_dir}: {exc.strerror}") from None
        raise ConfigError(
            f"run directory {run_dir} is in use by another process (pid {owner}); wait for it to end "
            "or choose another hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[key] = fd


def release_run_dir(run_dir: Path) -> None:
    fd = _HELD.pop(run_dir.resolve(), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor releases the flock


def move_previous_run(run_dir: Path) -> Path:
    """Move the files of a previous run into ``replaced-<time>/`` inside ``run_dir``; returns it."""
    target = run_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        n += 1
        target = run_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    target.mkdir()
    for name in RUN_FILES:
        if (run_dir / name).exists():
            os.replace(run_dir / name, target / name)
    return target


def claim_run_dir(run_dir: Path, resume: str | None, overwrite: bool, key: str = "hydra.run.dir") -> bool:
    """Create (if needed) and lock ``run_dir`` for a new or continued run.

    Returns whether this call created the directory (a refused command removes what it created).
    Refuses, in one line, a directory that holds a run when neither ``resume`` nor ``overwrite`` is
    set, and a directory another process is writing.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{key}={run_dir} is invalid: it is a file, not a directory")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{key}={run_dir} cannot be created: {exc.strerror}") from None
    try:
        lock_run_dir(run_dir)
        found = run_files(run_dir)
        if found and not resume and not overwrite:
            raise ConfigError(
                f"{key}={run_dir} already holds a run ({', '.join(found[:3])}); continue it with "
                "trainer.resume=auto, or start over with trainer.overwrite=true (the old files are "
                "moved to a replaced-<time>/ folder inside it)"
            )
        if found and overwrite and not resume:
            move_previous_run(run_dir)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        release_run_dir(run_dir)
        raise ConfigError(f"{key}={run_dir} is not writable: {exc.strerror}") from None
    except ConfigError:
        release_run_dir(run_dir)
        if created:
            remove_created(run_dir)
        raise
    return created


def check_writable_dir(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove it writable now, not after an epoch of work."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file; a folder is needed there (move the file away)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what} {folder} is not writable: {exc.strerror}") from None


def remove_created(run_dir: Path) -> None:
    """Remove a run directory this process created for a command that was then refused."""
    if holds_run(run_dir):
        return  # never: a run's files are not ours to delete
    release_run_dir(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
