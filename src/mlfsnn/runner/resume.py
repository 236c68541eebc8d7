"""Continuing a run, or starting a new one from a run's weights.

* ``trainer.resume`` continues the *same trajectory*: it is refused when the config differs in any
  key that changes what is computed (all keys but :data:`FREE_KEYS`). ``trainer.epochs`` may grow
  only when the schedule does not depend on it (``step``, ``constant``; not ``cosine``, whose
  ``T_max`` is the number of epochs).
* ``trainer.init_from`` is fine-tuning: the model's weights come from a checkpoint, the optimizer,
  schedule, epoch count and history start anew.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError
from .builders import SCHEDULERS
from .checkpoint import load_checkpoint, load_weights, resume_candidates

__all__ = [
    "FREE_KEYS",
    "IncompatibleCheckpoint",
    "check_resumable",
    "check_same_trajectory",
    "load_init_weights",
]

# Keys that change how a run is executed, logged or where it finds its data, never what it computes.
FREE_KEYS = (
    "name",
    "tags",
    "print_config",
    "energy",  # read by evaluation only, after the fact
    "logger",
    "paths",
    "dataset.root",
    "dataset.download",
    "dataset.cache_dir",
    "dataset.num_workers_prepare",
    "trainer.resume",
    "trainer.overwrite",
    "trainer.init_from",
    "trainer.max_steps",
    "trainer.device",
    "trainer.num_workers",
    "trainer.pin_memory",
    "trainer.progress",
    "trainer.eval_every",
    "trainer.eval_batch_size",
    "trainer.checkpoint_every",
    "trainer.log_grad_norms",
    "trainer.deterministic",
    "trainer.compile",
    "trainer.channels_last",
    "trainer.dist_timeout_s",
    "trainer.sync_every",
    "trainer.detect_anomaly",
    "trainer.fast_dev_run",
    "trainer.stop_at_train_acc",
    "trainer.profile_steps",
)


class IncompatibleCheckpoint(CheckpointError):
    """A sound checkpoint of a different trajectory: never a reason to fall back to an older file."""


def flat_keys(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": value}``."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat_keys(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _free(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in FREE_KEYS)


def check_same_trajectory(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    """Raise :class:`IncompatibleCheckpoint` naming every key that would change the trajectory."""
    a, b = flat_keys(old), flat_keys(new)
    scheduler = SCHEDULERS.get(str(b.get("scheduler.name")))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key) or _free(key):
            continue
        if key == "trainer.epochs" and scheduler is not None and not scheduler.uses_epochs:
            continue  # a step or constant schedule does not depend on the run's length
        diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    if diffs:
        hint = ""
        if any(d.startswith("trainer.epochs") for d in diffs):
            hint = f" (the {b.get('scheduler.name')} schedule is sized by trainer.epochs)"
        raise IncompatibleCheckpoint(
            f"cannot resume from {path}: the config differs in {'; '.join(diffs)}{hint}; a resume "
            f"continues the same trajectory. To start a new schedule from these weights, use "
            f"trainer.init_from={path} in a new run directory"
        )


def load_init_weights(source: str, model: nn.Module, map_location: Any = "cpu") -> tuple[Path, Any]:
    """Load ``source``'s model weights into ``model`` (a run directory means its best, else last).

    Returns the checkpoint file and the epoch it was written after.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        path = best if best.is_file() else path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"trainer.init_from={source!r}: no checkpoint at {path}")
    state = load_checkpoint(path, map_location)
    load_weights(model, state["model"], f"trainer.init_from={source!r}: {path}")
    return path, state.get("epoch")


def check_resumable(resolved: dict[str, Any] | None, resume: str, run_dir: Path) -> None:
    """Refuse, before anything is written, a resume whose checkpoint is of another trajectory.

    Reads the first of :func:`resume_candidates` that loads; a damaged one is left for the run
    itself, which falls back to the backup and moves the bad file aside. ``resolved`` ``None``: the
    config cannot be resolved yet (the job checks itself).
    """
    if resolved is None:
        return
    for path in resume_candidates(resume, run_dir):
        try:
            saved = load_checkpoint(path, require_training_state=True)
        except CheckpointError:
            continue
        check_same_trajectory(saved["config"], resolved, path)
        return
