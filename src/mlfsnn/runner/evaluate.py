"""Evaluate a saved checkpoint on its test set (the work behind ``snn-eval``).

The model is rebuilt from the config stored in the checkpoint; overrides apply to that config (e.g.
another T, data root or batch size).
"""

from __future__ import annotations

import tempfile
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
from .schema import known_keys, unknown_key_message

__all__ = ["check_writable", "default_out", "resolve_checkpoint", "run_eval", "write_result"]


def resolve_checkpoint(path: Path) -> Path:
    """A run directory means its ``best.pt`` (or ``last.pt`` when there is no best yet)."""
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        return best if best.is_file() else path / "checkpoints" / "last.pt"
    return path


def default_out(checkpoint: Path) -> Path:
    run_dir = checkpoint.resolve().parent.parent
    return run_dir / "eval.json" if (run_dir / "checkpoints").is_dir() else Path("eval.json")


def check_writable(out: Path) -> None:
    """Refuse, before any work, an ``out`` that cannot be written (nothing is created on refusal)."""
    if out.is_dir():
        raise ConfigError(f"out={out} is a directory; expected a file path such as {out / 'eval.json'}")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"out={out} cannot be written: {parent} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"out={out} cannot be written: {parent}: {exc.strerror}") from None


def _merge(cfg: Any, overrides: list[str]) -> None:
    """Apply ``key=value`` overrides to a stored config; unknown keys are refused, not added."""
    for arg in overrides:
        key = arg.partition("=")[0].lstrip("+")
        if key not in known_keys():
            raise ConfigError(f"override {arg!r} is invalid: {unknown_key_message(key)}")
    try:
        cfg.merge_with(OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise ConfigError(f"override {' '.join(overrides)!r} is invalid: {exc}".splitlines()[0]) from None


def run_eval(
    checkpoint: Path, overrides: list[str], out: Path | None = None, write: bool = True
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` and return the result; ``write`` also saves it to ``out``.

    ``out`` (default: the run directory's ``eval.json``) is checked for writability before any work.
    """
    out = out or default_out(checkpoint)
    check_writable(out)
    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    _merge(cfg, overrides)
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
        "eval_json": str(out),
    }
    if write:
        write_result(result)
    return result


def write_result(result: dict[str, Any]) -> Path:
    """Write ``result`` to its ``eval_json`` path (atomically)."""
    out = Path(result["eval_json"])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out={out} cannot be written: {exc.strerror}") from None
    try:
        write_json(out, {k: v for k, v in result.items() if k != "eval_json"})
    except OSError as exc:
        raise ConfigError(f"out={out} cannot be written: {exc.strerror or exc}") from None
    return out
