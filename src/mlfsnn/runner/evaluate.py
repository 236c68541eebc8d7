"""Evaluate a saved checkpoint on its test set (the work behind ``snn-eval``).

The model is rebuilt from the config stored in the checkpoint; overrides apply to that config (e.g.
another T, data root or batch size).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..data import build_datasets
from ..errors import CheckpointError, ConfigError
from ..nn import count_parameters
from .builders import build_model
from .checkpoint import load_checkpoint
from .config import validate
from .context import Context
from .loop import evaluate
from .outputs import environment, write_json

__all__ = ["resolve_checkpoint", "run_eval"]


def resolve_checkpoint(path: Path) -> Path:
    """A run directory means its ``best.pt`` (or ``last.pt`` when there is no best yet)."""
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        return best if best.is_file() else path / "checkpoints" / "last.pt"
    return path


def run_eval(checkpoint: Path, overrides: list[str], out: Path | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint``; writes the result to ``out`` (default: the run's ``eval.json``)."""
    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    try:
        cfg.merge_with(OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise ConfigError(f"override {' '.join(overrides)!r} is invalid: {exc}".splitlines()[0]) from None
    validate(cfg)
    ctx = Context.create(cfg)
    _, test_set, info = build_datasets(cfg.dataset, cfg.time_steps)
    ctx.static = info.static
    model = build_model(cfg, info).to(ctx.device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit the configured model: {str(exc).splitlines()[0]}"
        ) from None
    t0 = time.perf_counter()
    metrics = evaluate(model, ctx.test_loader(test_set), ctx)
    result = {
        "checkpoint": str(checkpoint.resolve()),
        "epoch": state.get("epoch"),
        "time_steps": cfg.time_steps,
        "overrides": overrides,
        "test_samples": info.test_samples,
        "num_params": count_parameters(model),
        **metrics,
        "eval_time_s": time.perf_counter() - t0,
        **environment(ctx.device),
    }
    if out is None:
        run_dir = checkpoint.resolve().parent.parent
        out = run_dir / "eval.json" if (run_dir / "checkpoints").is_dir() else Path("eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    result["eval_json"] = str(out)
    return result
