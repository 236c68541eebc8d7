"""Checkpoints: atomic writes, exact resume, and loading that never unpickles code.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` reads it. RNG states are stored as tensors and lists for the same reason.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

log = logging.getLogger("mlfsnn")

__all__ = [
    "CheckpointError",
    "capture_rng",
    "check_resume_compatible",
    "load_checkpoint",
    "load_resume_state",
    "previous_path",
    "restore_rng",
    "save_checkpoint",
]


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, keep_previous: bool = False) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, ``os.replace``.

    A crash mid-write leaves the previous file intact; readers never see a partial checkpoint. With
    ``keep_previous`` the file being replaced survives as ``<name>.prev.pt``, a fallback for resume.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; any failure becomes a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({reason[:200]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is not an mlfsnn checkpoint (no model/config entries)")
    return state


def load_resume_state(
    resume: str | None, run_dir: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | tuple[None, None]:
    """Load the checkpoint ``trainer.resume`` points at; ``(None, None)`` to start fresh.

    ``auto``: this run directory's ``checkpoints/last.pt``, or nothing if there is none yet; a
    directory: its ``checkpoints/last.pt``; a file: itself. For ``auto`` and directories a corrupt
    ``last.pt`` falls back to ``last.prev.pt`` (the one before), with a warning.
    """
    if resume is None or resume == "":
        return None, None
    target = run_dir if resume == "auto" else Path(os.path.expanduser(resume))
    if target.is_dir():
        last = target / "checkpoints" / "last.pt"
        candidates = [p for p in (last, previous_path(last)) if p.is_file()]
        if not candidates:
            if resume == "auto":
                return None, None
            raise CheckpointError(f"trainer.resume={resume!r}: no checkpoint at {last}")
        for i, path in enumerate(candidates):
            try:
                return load_checkpoint(path, map_location), path
            except CheckpointError as exc:
                if i == len(candidates) - 1:
                    raise
                log.warning("%s; falling back to %s", exc, candidates[i + 1])
    if not target.is_file():
        raise CheckpointError(f"trainer.resume={resume!r}: no checkpoint at {target}")
    return load_checkpoint(target, map_location), target


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) RNG states, as weights_only-safe objects."""
    version, py_state, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Keys whose change makes a checkpoint meaningless for this run (shapes, data, the neuron itself).
RESUME_KEYS = ("dataset.name", "model", "neuron", "time_steps", "optimizer.name", "scheduler.name")


def _pick(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg.get(part, {}) if isinstance(cfg, dict) else None
    return cfg


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def check_resume_compatible(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` naming every :data:`RESUME_KEYS` value that differs."""
    diffs = []
    for key in RESUME_KEYS:
        a, b = _flat(_pick(old, key), key), _flat(_pick(new, key), key)
        diffs += [
            f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
        ]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: the config differs in {'; '.join(diffs)}")
