"""Checkpoints: atomic, checksummed writes, exact resume, and loading that never unpickles code.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` reads it. RNG states are stored as tensors and lists for the same reason.
Format 2 adds ``checksum``: a SHA-256 digest of every entry, verified on load, because a flipped
bit in a tensor's storage loads without complaint from torch (the zip's CRCs are not checked).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..errors import CheckpointError, one_line
from ..files import atomic_write, os_reason, remove_stale_temporaries, replace_keeping_previous
from .ckpt_bounds import check_bounds

log = logging.getLogger("mlfsnn")

__all__ = [
    "FORMAT",
    "CheckpointError",
    "capture_rng",
    "checksum",
    "load_checkpoint",
    "load_resume_state",
    "previous_path",
    "quarantine",
    "remove_stale_temporaries",
    "restore_rng",
    "resume_candidates",
    "save_checkpoint",
]

FORMAT = 2  # 1 (no "format" key): no checksum; 2: "checksum" over everything else
_RESERVED = ("checksum", "format")


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


# --- checksum -------------------------------------------------------------------------------------


def _feed(h: Any, key: str, value: Any) -> None:
    """Hash ``value`` under its key path; dict entries in a fixed order (by the key's repr)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|tensor|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # its bytes in memory order
    elif isinstance(value, dict):
        h.update(f"{key}|dict|{len(value)}\n".encode())
        for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])):
            _feed(h, f"{key}/{k!r}", v)
    elif isinstance(value, (list, tuple)):
        h.update(f"{key}|{type(value).__name__}|{len(value)}\n".encode())
        for i, v in enumerate(value):
            _feed(h, f"{key}/{i}", v)
    else:  # numbers, strings, None: weights_only admits nothing whose repr is not stable
        h.update(f"{key}|{type(value).__name__}|{value!r}\n".encode())


def checksum(state: dict[str, Any]) -> str:
    """Hex digest of every entry of ``state`` but :data:`_RESERVED` (tensors: dtype, shape, bytes)."""
    h = hashlib.sha256()  # about 1.4 GB/s where CPUs have SHA instructions, 2-3x blake2b
    _feed(h, "", {k: v for k, v in state.items() if k not in _RESERVED})
    return h.hexdigest()


# --- saving ---------------------------------------------------------------------------------------


class _ErrorKeepingWriter:
    """Remembers the ``OSError`` of a write: torch reports a failed write (a full disk) as an
    unrelated "unexpected pos" ``RuntimeError`` once a first write has succeeded."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, keep_previous: bool = False) -> Path:
    """Write ``state`` plus its checksum to ``path`` atomically (see :func:`atomic_write`).

    A crash mid-write leaves the previous file intact; readers never see a partial checkpoint. With
    ``keep_previous`` the file being replaced survives as ``<name>.prev.pt``, a fallback for resume.
    An ``OSError`` (full disk, read-only folder) becomes a one-line :class:`CheckpointError`; the
    temp file is removed and the previous checkpoint left as it was.
    """
    path = Path(path)
    stored = {**state, "format": FORMAT, "checksum": checksum(state)}

    def write(f: BinaryIO) -> None:
        writer = _ErrorKeepingWriter(f)
        try:
            torch.save(stored, writer)
        except Exception:
            if writer.error is not None:
                raise writer.error from None
            raise

    def rotate() -> None:
        if keep_previous:  # a hard link, then the rename: a reader finds the file at every moment
            replace_keeping_previous(path, previous_path(path))

    try:
        atomic_write(path, write, before_replace=rotate)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {os_reason(exc, path)}") from None
    return path


# --- loading --------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(exc: BaseException, whole: bool) -> str:
    """torch's reason for failing, on one line, without its advice to unpickle the file anyway."""
    text = _ANSI.sub("", str(exc))
    # For a refused global torch puts its advice before this marker and the reason after it.
    text = text.split("WeightsUnpickler error:", 1)[-1]
    # Every line of that advice names weights_only, one suggests weights_only=False (which would run
    # whatever code the file holds): keep the other lines only.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    lines = [ln.removeprefix("Weights only load failed.").strip() for ln in lines]
    lines = [ln for ln in lines if ln][: None if whole else 1]
    return " ".join(" ".join(lines).split())[:500] or type(exc).__name__


def _advice(path: Path) -> str:
    prev = previous_path(path)
    return f"use {prev.name} next to it or another checkpoint" if prev.is_file() else "use another checkpoint"


_NOT_ZIP = "not a complete zip archive: truncated, e.g. by a full disk or a cut copy"


def _read(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # a global the safe unpickler refuses, or a broken pickle
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely: {_reason(exc, whole=True).rstrip('.')}. mlfsnn "
            "checkpoints hold only tensors and plain values and mlfsnn never unpickles code: this file "
            f"is damaged or was not written by mlfsnn; {_advice(path)}"
        ) from None
    except Exception as exc:
        # torch's reason for a truncated file is a zip-reader internal (or a KeyError for a non-zip).
        reason = _reason(exc, whole=False) if zipfile.is_zipfile(path) else _NOT_ZIP
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupt ({reason}); {_advice(path)} or delete it"
        ) from None


def _verify(state: Any, path: Path) -> None:
    """Check the stored checksum; files written before format 2 have none and are taken as they are."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} is not an mlfsnn checkpoint: it holds a {type(state).__name__}, not a dict"
        )
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {fmt!r}, newer than this mlfsnn reads ({FORMAT}): upgrade mlfsnn"
        )
    if fmt < 2:
        return  # written before checksums existed: still loads, unverified
    stored = state.get("checksum")
    if not isinstance(stored, str) or stored != checksum(state):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its tensors and values do not match the checksum stored "
            f"with them (damaged on disk or in a copy); {_advice(path)} or delete it"
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# What a training checkpoint (one resume can continue) holds beyond ``model`` and ``config``.
_TRAINING: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optimizer": (
        lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("state"), dict)
            and isinstance(v.get("param_groups"), list)
        ),
        "a dict with 'state' and 'param_groups'",
    ),
    "scheduler": (lambda v: isinstance(v, dict), "a dict"),
    "scaler": (lambda v: isinstance(v, dict), "a dict"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "step": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "best_acc": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "best_epoch": (_is_int, "an integer"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of dicts"),
    "rng": (lambda v: isinstance(v, dict), "a dict"),
    "in_epoch": (lambda v: v is None or isinstance(v, dict), "None or a dict"),
}


def _describe(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def _first_problem(state: dict[str, Any], training: bool) -> str | None:
    """The first entry that is missing or of the wrong kind, as a phrase; ``None`` when all fit."""
    model = state.get("model")
    if "model" not in state:
        return "'model' is missing"
    if not isinstance(model, dict):
        return f"'model' is {_describe(model)}, expected a dict of tensors"
    for k, v in model.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            return f"'model' entry {k!r} is {_describe(v)}, expected a tensor"
    if not isinstance(state.get("config"), dict):
        return "'config' is missing" if "config" not in state else "'config' is not a dict"
    for key, (ok, expected) in _TRAINING.items() if training else ():
        if key not in state:
            return f"{key!r} is missing"
        if not ok(state[key]):
            return f"{key!r} is {_describe(state[key])}, expected {expected}"
    return None


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    require_training_state: bool = False,
) -> dict[str, Any]:
    """Load with ``weights_only=True``, check its size and depth (:mod:`.ckpt_bounds`), verify the
    checksum and the entries; any failure becomes a one-line :class:`CheckpointError` naming the file.

    Every checkpoint has a ``model`` (str -> tensor) and a ``config`` (dict); with
    ``require_training_state`` also what resume needs (:data:`_TRAINING`). The returned dict is what
    was saved: the reserved ``format`` and ``checksum`` entries are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = _read(path, map_location)
    check_bounds(state, path)  # before any walk: a crafted tree can be exponential or too deep
    _verify(state, path)
    problem = _first_problem(state, require_training_state)
    if problem is not None:
        kind = "a complete mlfsnn training checkpoint" if require_training_state else "an mlfsnn checkpoint"
        raise CheckpointError(f"checkpoint {path} is not {kind}: {problem}")
    for key in _RESERVED:
        state.pop(key, None)
    return state


# --- resume ---------------------------------------------------------------------------------------


def load_weights(model: torch.nn.Module, weights: dict[str, Any], what: str) -> None:
    """``model.load_state_dict(weights)``; a mismatch is a one-line CheckpointError naming ``what``."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{what} does not fit the configured model: {one_line(exc)}") from None


def resume_candidates(resume: str | None, run_dir: Path) -> list[Path]:
    """The checkpoints ``trainer.resume`` points at, to try in order; ``[]`` to start fresh.

    ``auto``: this run directory's ``checkpoints/last.pt`` then ``last.prev.pt`` (the one before),
    those that exist, nothing if neither does yet; a directory: the same in it, at least one must
    exist; a file: itself, which must exist. Raises a one-line :class:`CheckpointError`.
    """
    if resume is None or resume == "":
        return []
    target = run_dir if resume == "auto" else Path(os.path.expanduser(resume))
    if target.is_dir():
        last = target / "checkpoints" / "last.pt"
        candidates = [p for p in (last, previous_path(last)) if p.is_file()]
        if not candidates and resume != "auto":
            raise CheckpointError(f"trainer.resume={resume!r}: no checkpoint at {last}")
        return candidates
    if not target.is_file():
        raise CheckpointError(f"trainer.resume={resume!r}: no checkpoint at {target}")
    return [target]


def quarantine(path: Path) -> Path:
    """Rename a bad checkpoint aside to ``<name>.corrupt-<YYYYmmdd-HHMMSS>``; returns the new path.

    Kept for inspection, and out of the way: left as ``last.pt``, the next save would rotate it into
    ``last.prev.pt``, over the good checkpoint resume fell back to. Never overwrites a file: a taken
    name gets ``-1``, ``-2``... (checking, then renaming, is safe because the caller holds the run
    directory's lock). Raises a one-line :class:`CheckpointError` when the rename fails.
    """
    base = f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(100):
        target = path.with_name(f"{base}-{n}" if n else base)
        if target.exists() or target.is_symlink():
            continue
        try:
            os.rename(path, target)
        except OSError as exc:
            raise CheckpointError(
                f"cannot move corrupt checkpoint {path} aside: {os_reason(exc, path)}; move or delete it "
                "yourself"
            ) from None
        return target
    raise CheckpointError(f"cannot move corrupt checkpoint {path} aside: 100 earlier copies are in the way")


def load_resume_state(
    resume: str | None, run_dir: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | tuple[None, None]:
    """Load the checkpoint ``trainer.resume`` points at; ``(None, None)`` to start fresh.

    Tries :func:`resume_candidates` in order: an unusable ``last.pt`` falls back to ``last.prev.pt``
    with a warning and is moved aside (:func:`quarantine`) so the next save keeps the backup.
    """
    candidates = resume_candidates(resume, run_dir)
    for i, path in enumerate(candidates):
        try:
            return load_checkpoint(path, map_location, require_training_state=True), path
        except CheckpointError as exc:
            if i == len(candidates) - 1:
                raise
            moved = quarantine(path) if path.exists() else path
            log.warning("%s; falling back to %s (the bad file is now %s)", exc, candidates[i + 1], moved)
    return None, None


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
