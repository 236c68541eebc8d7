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
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import LinkRefused, atomic_write_text, ensure_dir, open_lock, os_reason, refuse_links

__all__ = [
    "HYDRA_FILES",
    "LOCK_NAME",
    "check_path_length",
    "check_sweep_point",
    "check_writable_dir",
    "claim_run_dir",
    "finished_summary",
    "holds_run",
    "lock_run_dir",
    "move_previous_run",
    "refuse_linked_sweep_point",
    "refuse_links_in_run_dir",
    "release_run_dir",
    "remove_created",
    "remove_unstarted",
    "run_files",
    "save_hydra_files",
]

LOCK_NAME = ".mlfsnn.lock"
# What a run leaves in its directory; Hydra's .hydra/ and the log are moved along on overwrite. The
# loggers' folders (runner/loggers.py) and debug=profile's (runner/debug.py) are among them.
RUN_FILES = (
    "metrics.jsonl",
    "summary.json",
    "eval.json",
    "checkpoints",
    "wandb",
    "tensorboard",
    "csv",
    "profile",
    ".hydra",
    "train.log",
)
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
_CHECKPOINTS = ("last.pt", "last.prev.pt", "best.pt")
_HELD: dict[Path, int] = {}
_PARENTS: dict[Path, list[Path]] = {}


def run_files(run_dir: Path) -> list[str]:
    """The files that make ``run_dir`` a run (empty when it holds none)."""
    found = [n for n in ("metrics.jsonl", "summary.json") if (run_dir / n).is_file()]
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        found += [f"checkpoints/{p.name}" for p in sorted(ckpts.glob("*.pt"))]
    return found


def holds_run(run_dir: Path) -> bool:
    return bool(run_files(run_dir))


def lock_run_dir(run_dir: Path, key: str = "run directory") -> None:
    """Take the run directory's exclusive lock for this process (idempotent), or refuse in one line.

    The lock file is opened without following a link and must be a regular file with one name, so
    a planted ``.mlfsnn.lock`` can never truncate a file elsewhere.
    """
    key = run_dir.resolve()
    if key in _HELD:
        return
    try:
        fd = open_lock(run_dir / LOCK_NAME)
    except LinkRefused as exc:
        raise ConfigError(f"{key}={run_dir} cannot be used: {exc}") from None
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
        if os.path.lexists(run_dir / name):
            os.replace(run_dir / name, target / name)
    return target


def check_path_length(path: Path, key: str) -> None:
    """Refuse a path the filesystem cannot hold before anything is created on the way to it."""
    limit = _name_max(path)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(
                f"{key}={str(path)[:60]}... is invalid: the name {part[:24]}... has {len(os.fsencode(part))} "
                f"bytes and this filesystem allows {limit} per name"
            )
    if len(os.fsencode(str(path.absolute()))) >= 4096:
        raise ConfigError(f"{key}={str(path)[:60]}... is invalid: the path is longer than 4095 bytes")


def _name_max(path: Path) -> int:
    for folder in (path, *path.parents):
        if folder.is_dir():
            try:
                return os.pathconf(folder, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def refuse_links_in_run_dir(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """Refuse a run directory where a file mlfsnn or Hydra writes is a symbolic link (planted or not):
    writing through it would change a file outside the run directory."""
    try:
        refuse_links(run_dir, (LOCK_NAME, *RUN_FILES))
        if (run_dir / "checkpoints").is_dir():
            refuse_links(run_dir / "checkpoints", _CHECKPOINTS)
        if (run_dir / ".hydra").is_dir():
            refuse_links(run_dir / ".hydra", HYDRA_FILES)
    except LinkRefused as exc:
        raise ConfigError(f"{key}={run_dir} cannot be used: {exc}") from None


def refuse_linked_sweep_point(job_dir: Path, where: str, suffix: str = "") -> None:
    """A sweep names and makes its points' directories (``<sweep dir>/<n>``), so a symbolic link at
    one was planted, not chosen: refuse it in one line. (A link as ``hydra.run.dir`` or above the
    sweep directory is the user's choice, e.g. scratch space.)"""
    try:
        refuse_links(job_dir.parent, (job_dir.name,))
    except LinkRefused as exc:
        raise ConfigError(f"{where}: {exc}{suffix}") from None


def check_sweep_point(run_dir: Path) -> None:
    """In a job of ``snn-train -m``: its directory must not be a link (planted after the sweep's
    own check, while earlier points ran). Outside a sweep there is nothing to check."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        refuse_linked_sweep_point(run_dir, f"sweep point {HydraConfig.get().job.num}")


def claim_run_dir(run_dir: Path, resume: str | None, overwrite: bool, key: str = "hydra.run.dir") -> bool:
    """Create (if needed) and lock ``run_dir`` for a new or continued run.

    Returns whether this call created the directory (a refused command removes what it created).
    Refuses, in one line, a directory that holds a run when neither ``resume`` nor ``overwrite`` is
    set, a directory another process is writing, and one where a file it would write is a link. The
    lock comes first: nothing is moved or written in a directory another process holds.
    """
    check_path_length(run_dir, key)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{key}={run_dir} is invalid: it is a file, not a directory")
    created = not run_dir.exists()
    # the folders this call creates on the way, so that a refusal removes them again
    _PARENTS[run_dir.absolute()] = [p for p in run_dir.absolute().parents if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty_parents(run_dir)
        raise ConfigError(f"{key}={run_dir} cannot be created: {os_reason(exc, run_dir)}") from None
    try:
        lock_run_dir(run_dir, key)
        refuse_links_in_run_dir(run_dir, key)
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
    except (OSError, ConfigError) as exc:
        release_run_dir(run_dir)
        if created:
            remove_created(run_dir)  # a full disk at start leaves no empty directory behind
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{key}={run_dir} is not writable: {os_reason(exc, run_dir)}") from None
    return created


def check_writable_dir(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove it writable now, not after an epoch of work."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file; a folder is needed there (move the file away)")
    try:
        ensure_dir(folder)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except LinkRefused as exc:
        raise ConfigError(f"{what} {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {folder} is not writable: {os_reason(exc, folder)}") from None


def remove_created(run_dir: Path) -> None:
    """Remove a run directory this process created for a command that was then refused."""
    if holds_run(run_dir):
        return  # never: a run's files are not ours to delete
    release_run_dir(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    _remove_empty_parents(run_dir)


def remove_unstarted(run_dir: Path) -> bool:
    """Remove a run directory this process created and stopped before any result (no checkpoint, no
    epoch logged, no summary), as :func:`remove_created` does; returns whether it is gone."""
    metrics = run_dir / "metrics.jsonl"
    has_rows = metrics.is_file() and metrics.stat().st_size > 0
    ckpts = run_dir / "checkpoints"
    started = has_rows or (run_dir / "summary.json").is_file() or (ckpts.is_dir() and any(ckpts.glob("*.pt")))
    if started:
        return False
    release_run_dir(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    _remove_empty_parents(run_dir)
    return not run_dir.exists()


def _remove_empty_parents(run_dir: Path) -> None:
    for folder in _PARENTS.pop(run_dir.absolute(), []):  # deepest first; stops at one that is not empty
        try:
            folder.rmdir()
        except OSError:
            break


def save_hydra_files(run_dir: Path, cfg: Any) -> None:
    """Write Hydra's record of the launch (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``).

    ``configs/train.yaml`` sets ``hydra.output_subdir: null`` so that Hydra does not write them
    itself before the task starts: here they are written after the directory is claimed and a
    resume is known to continue the same trajectory, so a refused command leaves the run's record
    as it was, and never through a link. Nothing outside a Hydra run of this directory, or when the
    user chose ``hydra.output_subdir`` (Hydra then wrote them).
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    hc = hydra_cfg.hydra
    if hc.output_subdir is not None or Path(str(hc.runtime.output_dir)).resolve() != run_dir.resolve():
        return
    folder = ensure_dir(run_dir / ".hydra")
    files = (("config.yaml", cfg), ("hydra.yaml", hydra_cfg), ("overrides.yaml", hc.overrides.task))
    try:
        for name, conf in files:
            atomic_write_text(folder / name, OmegaConf.to_yaml(conf))
    except OSError as exc:
        raise ConfigError(f"cannot write {folder}: {os_reason(exc, folder)}") from None


def finished_summary(run_dir: Path, saved: dict[str, Any], trainer: Any) -> dict[str, Any] | None:
    """The ``summary.json`` of a run that a resume finds already finished, else ``None``.

    Finished: the checkpoint ends the run (``trainer.epochs`` or ``max_steps`` reached, not written
    mid-epoch) and the summary says so. Such a run is left byte for byte as it was.
    """
    max_steps = trainer.max_steps
    done = saved["epoch"] >= trainer.epochs or (max_steps is not None and saved["step"] >= max_steps)
    if not done or saved.get("in_epoch"):
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_bytes())
    except (OSError, ValueError):
        return None  # killed before its summary: the resume writes it
    ok = isinstance(summary, dict) and summary.get("status") == "ok"
    return summary if ok and summary.get("epochs_completed") == saved["epoch"] else None
