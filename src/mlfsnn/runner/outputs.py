"""What a run writes: ``metrics.jsonl`` (one object per evaluated epoch), ``summary.json``, wandb."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from omegaconf import OmegaConf

from ..errors import UserError
from ..files import NoFollowFileHandler, append_bytes, atomic_write, atomic_write_text, os_reason
from ..files import remove_stale_temporaries as remove_stale_temporaries

__all__ = [
    "MetricsLog",
    "WandbLogger",
    "add_file_log",
    "atomic_write",
    "environment",
    "git_commit",
    "log_eval_run",
    "os_reason",
    "records_to",
    "remove_stale_temporaries",
    "wandb_defaults",
    "write_json",
]

log = logging.getLogger("mlfsnn")

_GROUP_MAX = 128  # wandb refuses longer group names; a long path keeps its end (the sweep's own folder)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON readers reject them), tensors become numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically; an ``OSError`` (full disk, read-only folder) becomes a
    one-line :class:`UserError` and leaves any previous file intact."""
    text = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"  # allow_nan: a missed NaN fails

    def dump(f: BinaryIO) -> None:
        f.write(text.encode())

    try:
        atomic_write(path, dump)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {os_reason(exc, path)}") from None


class MetricsLog:
    """``metrics.jsonl``: appended and flushed once per epoch; rewritten from history on resume.

    Appends go through :func:`~mlfsnn.files.append_bytes` (no link followed; a full disk leaves no
    half line), the rewrite through an atomic replace (readers see the old file or the new one).
    """

    def __init__(self, path: Path | None, history: list[dict[str, Any]] | None = None) -> None:
        self.path = path  # None: keep the history in memory only (ranks other than 0)
        self.history: list[dict[str, Any]] = list(history or [])
        # Rewriting drops epochs logged after the checkpoint we resume from (a crash between the two).
        self._write(self.history, rewrite=True)

    def append(self, row: dict[str, Any]) -> None:
        self._write([row])
        self.history.append(row)

    def _write(self, rows: list[dict[str, Any]], rewrite: bool = False) -> None:
        """One strict JSON object a line; an ``OSError`` (full disk) becomes a one-line UserError."""
        if self.path is None:
            return
        # Serialised before opening: a value that cannot be written must not truncate the file first.
        text = "".join(json.dumps(_clean(row), allow_nan=False) + "\n" for row in rows)
        try:
            if rewrite:
                atomic_write_text(self.path, text)
            else:
                append_bytes(self.path, text.encode())
        except OSError as exc:
            raise UserError(f"cannot write {self.path}: {os_reason(exc, self.path)}") from None


_RECORDING: set[Path] = set()  # the train.log files this process has claimed (see add_file_log)


def add_file_log(path: Path) -> logging.Handler | None:
    """Send the ``mlfsnn`` logger to ``path`` unless a handler (e.g. Hydra's) already writes there.

    Called once the run directory is claimed; from then on errors belong in this log too
    (:func:`records_to`), before it they concern a run that is not this process's to write.
    """
    _RECORDING.add(path.resolve())
    root = logging.getLogger()
    for logger in (root, log):
        for h in logger.handlers:
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve():
                return None
    handler = NoFollowFileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def records_to(path: Path) -> bool:
    """Whether this process claimed ``path`` as its log (:func:`add_file_log`)."""
    return path.resolve() in _RECORDING


def git_commit() -> str | None:
    """The commit of the mlfsnn checkout in use, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "num_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


class WandbLogger:
    """A thin wrapper that is a no-op when disabled; wandb is imported only when enabled.

    ``group`` and ``tags`` are this program's defaults (see :func:`wandb_defaults`): a
    ``logger.wandb.group`` set by the user wins, and ``logger.wandb.tags`` are added to ``tags``.
    ``job_type`` is ``train`` for snn-train, ``eval`` for snn-eval.
    """

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        config: dict[str, Any],
        name: str,
        run_id: str | None = None,
        *,
        group: str | None = None,
        job_type: str = "train",
        tags: Sequence[str] = (),
    ) -> None:
        """``run_id``: continue that wandb run (a resumed training run keeps one wandb history)."""
        self.run = None
        self.identity: dict[str, Any] | None = None  # what an eval run needs to join this one
        if cfg is None or not cfg.enabled:
            return
        mode = cfg.mode or os.environ.get("WANDB_MODE") or "offline"
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.wandb.mode={mode!r} is invalid: expected online, offline or disabled")
        import wandb

        group = (str(cfg.group) if cfg.group else group or "")[-_GROUP_MAX:] or None
        tags = list(dict.fromkeys([*tags, *(str(t) for t in cfg.tags or [])]))  # once each, in order
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=group,
            job_type=job_type,
            tags=tags,
            name=name,
            config=config,
            dir=str(run_dir),
            mode=mode,
            reinit="finish_previous",
            # configs stored before the key existed have no verbose: quiet, as the default
            settings=wandb.Settings(silent=not bool(cfg.get("verbose", False))),
            id=run_id,
            resume="allow" if run_id else None,
        )
        self.identity = {"id": self.run.id, "name": name, "group": group, "tags": tags}

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            flat = {}
            for k, v in row.items():
                if isinstance(v, dict):
                    flat.update({f"{k}/{kk}": vv for kk, vv in v.items()})
                else:
                    flat[k] = v
            self.run.log(flat, step=step)

    def finish(self, summary: dict[str, Any] | None = None, exit_code: int = 0) -> None:
        if self.run is not None:
            if summary:
                for k, v in summary.items():
                    if isinstance(v, (int, float, str)) or v is None:
                        self.run.summary[k] = v
            self.run.finish(exit_code=exit_code)
            self.run = None


def wandb_defaults(run_dir: Path) -> dict[str, Any]:
    """The wandb ``group`` and ``tags`` of a run Hydra launched (``run_dir`` and none outside Hydra).

    The runs of one multirun share a group, the sweep directory (``hydra.sweep.dir``); a single run
    is a group of its own, named by its run directory, so that its snn-eval runs join it. Tags name
    the ``+experiment``, ``+variant`` and ``debug`` presets chosen (``experiment=digits``).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"group": str(run_dir), "tags": []}
    hc = HydraConfig.get()
    group = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.run.dir
    choices = hc.runtime.choices
    tags = [f"{key}={choices[key]}" for key in ("experiment", "variant", "debug") if choices.get(key)]
    return {"group": str(group), "tags": tags}


def log_eval_run(
    cfg: Any, saved: dict[str, Any], result: dict[str, Any], folder: Path, overrides: Sequence[str]
) -> str | None:
    """snn-eval's wandb run, when ``cfg`` (the checkpoint's config after overrides) has wandb enabled.

    A new run, not the training run resumed: named ``<training run name>-eval``, ``job_type=eval``, in
    the training run's group with its tags (recorded in the checkpoint as ``wandb_run``), and
    ``eval.train_run_id`` in its config. The mode: a ``logger.wandb.mode`` override, else
    ``$WANDB_MODE``, else the training run's. Returns the eval run's id (``None`` when disabled).
    """
    wandb_cfg = OmegaConf.select(cfg, "logger.wandb")
    if wandb_cfg is None or not wandb_cfg.enabled:
        return None
    if os.environ.get("WANDB_MODE") and not any("logger.wandb.mode=" in o for o in overrides):
        wandb_cfg.mode = os.environ["WANDB_MODE"]
    train = saved.get("wandb_run") or {}
    link = {"checkpoint": result.get("checkpoint"), "overrides": list(overrides)}
    link["train_run_id"] = train.get("id") or saved.get("wandb_id")
    config = {**OmegaConf.to_container(cfg, resolve=True), "eval": link}
    name = f"{train.get('name') or cfg.name}-eval"
    group = train.get("group") or str(folder)
    logger = WandbLogger(
        wandb_cfg, folder, config, name, group=group, job_type="eval", tags=train.get("tags") or ()
    )
    run_id = logger.run_id
    numbers = (int, float, dict)
    scalars = {k: v for k, v in result.items() if isinstance(v, numbers) and not isinstance(v, bool)}
    logger.log(scalars, step=int(result.get("epoch") or 0))
    logger.finish({k: v for k, v in scalars.items() if not isinstance(v, dict)})
    return run_id
