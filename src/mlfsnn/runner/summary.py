"""``summary.json``: what a run reports when it ends (finished, stopped, diverged or failed)."""

from __future__ import annotations

from typing import Any

from ..errors import one_line
from .state import RunState

__all__ = ["EVAL_KEYS", "failure_summary", "run_summary"]

# The last evaluation's observations carried into the summary.
EVAL_KEYS = (
    "firing_rate",
    "dormant_ratio",
    "sops_per_sample",
    "sops_per_event_sample",
    "snn_macs_per_sample",
    "ann_macs_per_sample",
    "energy_pj_per_sample",
    "energy_event_pj_per_sample",
    "ann_energy_pj_per_sample",
    "energy_ratio",
    "energy_ratio_event",
)


def run_summary(
    name: str,
    st: RunState,
    info: Any,
    final: dict[str, Any],
    *,
    history: list[dict[str, Any]],
    val_split: bool,
    elapsed_s: float,
    stopped_by: str,
    num_params: int,
    world_size: int,
    environment: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    """The summary of a run that ended normally or by a signal or a non-finite loss.

    ``final``: the last evaluated row of ``history`` (every epoch's row, this process's included);
    ``elapsed_s``: this process's time.
    """
    last_eval = st.last_eval or final
    trained = next((r for r in reversed(history) if "train_acc" in r), {})
    return {
        "name": name,
        "status": st.status,
        "stopped_by": stopped_by if st.status == "preempted" else None,  # e.g. SIGTERM
        **st.selection_summary(info.val_samples if val_split else None),
        "final_test_acc": final.get("test_acc"),
        "final_test_loss": final.get("test_loss"),
        # Degradation is about fitting the training set: the last epoch's figures, as the loop
        # measured them (a running mean over the epoch's batches, train mode, augmented inputs).
        "final_train_acc": trained.get("train_acc"),
        "final_train_loss": trained.get("train_loss"),
        "train_metrics": "last epoch, running mean over its batches (train mode)",
        "num_params": num_params,
        "train_samples": info.train_samples,
        "test_samples": info.test_samples,
        "data": info.to_dict(),
        "epochs_completed": st.epoch,
        "steps": st.step,
        # every process of the run (each earlier one up to its last checkpoint), then this one
        "wall_time_s": st.wall_time_s + elapsed_s,
        "process_wall_time_s": elapsed_s,
        **{k: last_eval.get(k) for k in EVAL_KEYS},
        "world_size": world_size,
        **environment,
        "config": config,
    }


def failure_summary(
    name: str, st: RunState, exc: BaseException, elapsed_s: float, config: dict[str, Any]
) -> dict[str, Any]:
    """The summary of a run that crashed: ``status: failed`` and the error, on one line."""
    return {
        "name": name,
        "status": "failed",
        "error": f"{type(exc).__name__}: {one_line(exc)}"[:500],
        "epochs_completed": st.epoch,
        "steps": st.step,
        "wall_time_s": st.wall_time_s + elapsed_s,
        "process_wall_time_s": elapsed_s,
        "config": config,
    }
