"""The experiment runner: a validated Hydra config in, a run directory out.

    config (validation) -> context, builders -> loop (train_one_epoch, evaluate) -> trainer
    (setup / resume / fit / finish) -> checkpoint, outputs (metrics.jsonl, summary.json, wandb)

Imports hydra/omegaconf and the data package; the library (:mod:`mlfsnn.nn`) never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evaluate import run_eval
    from .trainer import RunState, Trainer, train

__all__ = ["RunState", "Trainer", "run_eval", "train"]


def __getattr__(name: str) -> object:
    # Loaded on first use: the console scripts import light runner modules (schema, preflight)
    # before torch, so that --help answers at once and OpenMP's defaults are set first.
    if name == "run_eval":
        from .evaluate import run_eval

        return run_eval
    if name in ("RunState", "Trainer", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'mlfsnn.runner' has no attribute {name!r}")
