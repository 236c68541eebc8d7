"""Checks on a composed config, before any work: one-line errors naming key, value and what is allowed."""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["ConfigError", "validate"]


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line meant for the user."""


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _int(cfg: DictConfig, key: str, low: int, optional: bool = False) -> None:
    v = _get(cfg, key)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        _fail(key, v, f"expected an integer >= {low}" + (" or null" if optional else ""))


def _number(
    cfg: DictConfig,
    key: str,
    low: float | None = None,
    high: float | None = None,
    strict_low: bool = False,
    optional: bool = False,
) -> None:
    v = _get(cfg, key)
    if v is None and optional:
        return
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if strict_low else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        rng = []
        if low is not None:
            rng.append(f"{'>' if strict_low else '>='} {low}")
        if high is not None:
            rng.append(f"<= {high}")
        _fail(
            key,
            v,
            "expected a number" + (" " + " and ".join(rng) if rng else "") + (" or null" if optional else ""),
        )


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    v = _get(cfg, key)
    if v not in choices:
        _fail(key, v, f"expected one of {', '.join(choices)}")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid value of a composed ``train`` config."""
    try:
        _validate(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # missing keys, failed interpolations: still one line
        raise ConfigError(f"config error: {exc}".splitlines()[0]) from None


def _validate(cfg: DictConfig) -> None:
    _int(cfg, "time_steps", 1)
    # neuron (paper-notes §1)
    _int(cfg, "neuron.levels", 1)
    _number(cfg, "neuron.threshold")
    _number(cfg, "neuron.width", 0, strict_low=True)
    _number(cfg, "neuron.decay", 0, 1)
    if not isinstance(_get(cfg, "neuron.detach_reset"), bool):
        _fail("neuron.detach_reset", _get(cfg, "neuron.detach_reset"), "expected true or false")
    # model
    depth = _get(cfg, "model.depth")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        _fail("model.depth", depth, "expected 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 68, 110, ...)")
    widths = _get(cfg, "model.widths")
    ws = list(widths) if widths is not None and not isinstance(widths, (str, int)) else None
    if ws is None or len(ws) != 3 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in ws):
        _fail(
            "model.widths",
            OmegaConf.to_object(widths) if OmegaConf.is_config(widths) else widths,
            "expected three positive integers, e.g. [64, 128, 256]",
        )
    _choice(cfg, "model.block", ("ds", "plain"))
    # optimizer and schedule
    _choice(cfg, "optimizer.name", ("sgd", "adamw"))
    _number(cfg, "optimizer.lr", 0, strict_low=True)
    _number(cfg, "optimizer.weight_decay", 0)
    if _get(cfg, "optimizer.name") == "sgd":
        _number(cfg, "optimizer.momentum", 0, 1)
    _choice(cfg, "scheduler.name", ("step", "cosine", "constant"))
    if _get(cfg, "scheduler.name") == "step":
        _int(cfg, "scheduler.step_size", 1)
        _number(cfg, "scheduler.gamma", 0, strict_low=True)
    # trainer
    for key in ("epochs", "batch_size", "eval_every", "checkpoint_every"):
        _int(cfg, f"trainer.{key}", 1)
    _int(cfg, "trainer.eval_batch_size", 1, optional=True)
    _int(cfg, "trainer.max_steps", 1, optional=True)
    _int(cfg, "trainer.num_workers", 0)
    _int(cfg, "trainer.seed", 0)
    _number(cfg, "trainer.grad_clip", 0, strict_low=True, optional=True)
    device = _get(cfg, "trainer.device")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        _fail("trainer.device", device, "expected auto, cpu, cuda or cuda:N")
    _choice(cfg, "trainer.precision", ("fp32", "bf16", "fp16"))
    for key in ("deterministic", "progress", "sync_bn", "log_grad_norms", "channels_last", "compile"):
        if not isinstance(_get(cfg, f"trainer.{key}"), bool):
            _fail(f"trainer.{key}", _get(cfg, f"trainer.{key}"), "expected true or false")
    if _get(cfg, "trainer.pin_memory") not in ("auto", True, False):
        _fail("trainer.pin_memory", _get(cfg, "trainer.pin_memory"), "expected auto, true or false")
    resume = _get(cfg, "trainer.resume")
    if resume is not None and not isinstance(resume, str):
        _fail("trainer.resume", resume, "expected null, auto, a run directory or a checkpoint file")
    if _get(cfg, "logger.wandb.enabled"):
        mode = _get(cfg, "logger.wandb.mode")
        if mode not in (None, "online", "offline", "disabled"):
            _fail("logger.wandb.mode", mode, "expected online, offline or disabled (or set WANDB_MODE)")
    if _get(cfg, "dataset.subset") is not None:
        _int(cfg, "dataset.subset", 1)
