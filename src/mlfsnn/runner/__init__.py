"""The experiment runner: a validated Hydra config in, a run directory out.

    config (validation) -> context, builders -> loop (train_one_epoch, evaluate) -> trainer
    (setup / resume / fit / finish) -> checkpoint, outputs (metrics.jsonl, summary.json, wandb)

Imports hydra/omegaconf and the data package; the library (:mod:`mlfsnn.nn`) never imports it.
"""

from .evaluate import run_eval
from .trainer import RunState, Trainer, train

__all__ = ["RunState", "Trainer", "run_eval", "train"]
