"""What a run has done so far: the state the loop advances, a checkpoint stores and a summary reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .loop import EpochProgress

__all__ = ["RunState"]

# Progress and model selection, stored under these names in every checkpoint.
_BEST_KEYS = (
    "epoch",
    "step",
    "best_acc",
    "best_epoch",
    "best_val_acc",
    "best_val_epoch",
    "test_acc_at_best_val",
)


@dataclass
class RunState:
    """What the loop advances and a checkpoint stores."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_acc: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    progress: EpochProgress = field(default_factory=EpochProgress)  # the epoch in progress
    rng: dict[str, Any] | None = None  # RNG states of a mid-epoch checkpoint, restored on resume
    wandb_id: str | None = None
    best_val_acc: float = -1.0  # with a validation split: model selection reads these
    best_val_epoch: int = 0
    test_acc_at_best_val: float | None = None
    status: str = "ok"  # ok | preempted | non_finite_loss | pruned (by an Optuna pruner)
    last_eval: dict[str, Any] | None = None
    wall_time_s: float = 0.0  # spent by the processes before this one (up to their last checkpoint)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], main_rank: bool) -> RunState:
        """The state a (validated) training checkpoint was written in."""
        st = cls(
            **{k: saved[k] for k in _BEST_KEYS[:4]},
            history=saved["history"],
            rng=saved["rng"],
            wandb_id=saved.get("wandb_id"),
            # checkpoints written before validation splits existed have none of these
            best_val_acc=saved.get("best_val_acc", -1.0),
            best_val_epoch=saved.get("best_val_epoch", 0),
            test_acc_at_best_val=saved.get("test_acc_at_best_val"),
            wall_time_s=float(saved.get("wall_time_s") or 0.0),
        )
        if saved.get("in_epoch"):  # written mid-epoch: continue that epoch where it stopped
            sums = saved["in_epoch"]  # global sums: rank 0 continues with them, the others from 0
            st.progress = EpochProgress(**sums) if main_rank else EpochProgress(sums["batches"])
        return st

    def checkpoint_fields(
        self, history: list[dict[str, Any]], in_epoch: EpochProgress | None, elapsed_s: float
    ) -> dict[str, Any]:
        """This state as checkpoint entries (model, optimizer, RNG and config are the caller's).

        ``elapsed_s``: this process's time so far; the checkpoint stores the run's total, so the
        summary of a resumed run counts every process up to its last checkpoint.
        """
        return {
            **{k: getattr(self, k) for k in _BEST_KEYS},
            "history": history,
            "in_epoch": asdict(in_epoch) if in_epoch is not None else None,
            "wandb_id": self.wandb_id,
            "wall_time_s": self.wall_time_s + elapsed_s,
        }

    def selection_summary(self, val_samples: int | None) -> dict[str, Any]:
        """Best test (the paper's convention) and, with a validation split, the honest selection."""
        out: dict[str, Any] = {
            "best_test_acc": self.best_acc if self.best_acc >= 0 else None,
            "best_epoch": self.best_epoch or None,
        }
        if val_samples is not None:
            out.update(
                best_val_acc=self.best_val_acc if self.best_val_acc >= 0 else None,
                best_val_epoch=self.best_val_epoch or None,
                test_acc_at_best_val=self.test_acc_at_best_val,
                val_samples=val_samples,
            )
        return out
