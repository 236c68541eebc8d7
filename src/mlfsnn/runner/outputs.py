"""What a run writes: ``metrics.jsonl`` (one object per evaluated epoch), ``summary.json``, wandb."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["MetricsLog", "WandbLogger", "add_file_log", "environment", "git_commit", "write_json"]

log = logging.getLogger("mlfsnn")


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
    """Write JSON atomically (temp file + ``os.replace``) so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(_clean(obj), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


class MetricsLog:
    """``metrics.jsonl``: appended and flushed once per epoch; rewritten from history on resume."""

    def __init__(self, path: Path | None, history: list[dict[str, Any]] | None = None) -> None:
        self.path = path  # None: keep the history in memory only (ranks other than 0)
        self.history: list[dict[str, Any]] = list(history or [])
        if path is None:
            return
        # Rewriting drops epochs logged after the checkpoint we resume from (a crash between the two).
        with open(path, "w") as f:
            for row in self.history:
                f.write(json.dumps(_clean(row)) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
            f.flush()


def add_file_log(path: Path) -> logging.Handler | None:
    """Send the ``mlfsnn`` logger to ``path`` unless a handler (e.g. Hydra's) already writes there."""
    root = logging.getLogger()
    for logger in (root, log):
        for h in logger.handlers:
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve():
                return None
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


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
    """A thin wrapper that is a no-op when disabled; wandb is imported only when enabled."""

    def __init__(
        self, cfg: Any, run_dir: Path, config: dict[str, Any], name: str, run_id: str | None = None
    ) -> None:
        """``run_id``: continue that wandb run (a resumed training run keeps one wandb history)."""
        self.run = None
        if cfg is None or not cfg.enabled:
            return
        mode = cfg.mode or os.environ.get("WANDB_MODE") or "offline"
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.wandb.mode={mode!r} is invalid: expected online, offline or disabled")
        import wandb

        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=list(cfg.tags or []),
            name=name,
            config=config,
            dir=str(run_dir),
            mode=mode,
            reinit="finish_previous",
            id=run_id,
            resume="allow" if run_id else None,
        )

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
