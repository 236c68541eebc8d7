"""The resume steps of a :class:`~mlfsnn.runner.trainer.Trainer`: which checkpoint continues this run,
and applying it (a corrupt ``last.pt`` falls back to ``last.prev.pt``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, one_line
from .checkpoint import load_checkpoint, quarantine, resume_candidates
from .resume import IncompatibleCheckpoint, check_same_trajectory, load_init_weights
from .state import RunState

__all__ = ["ResumeSteps"]

log = logging.getLogger("mlfsnn")


class ResumeSteps:
    """Mixed into the Trainer; uses its ``cfg``, ``ctx``, ``run_dir``, ``resolved`` and model parts."""

    cfg: Any
    ctx: Any
    run_dir: Path
    resolved: Any
    _pending: tuple[int, dict[str, Any]] | None

    # --- resume -----------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from ``trainer.resume``'s checkpoint, or start from ``trainer.init_from``'s weights.

        A corrupt or unfit ``last.pt`` falls back to ``last.prev.pt`` and is renamed aside, so the
        next save cannot rotate it over the good backup.
        """
        tr = self.cfg.trainer
        if tr.init_from:
            path, epoch = load_init_weights(tr.init_from, self.model, self.ctx.device)
            log.info("initialised the model from %s (epoch %s); new optimizer and schedule", path, epoch)
            return
        while self._pending is not None:
            index, saved = self._pending
            try:
                self._apply(saved, self.candidates[index])
                return
            except IncompatibleCheckpoint:
                raise
            except CheckpointError as exc:
                if index == len(self.candidates) - 1:
                    raise
                self._fall_back(index, exc)
                self._pending = self._load_resume_checkpoint(index + 1)

    def _load_resume_checkpoint(self, start: int) -> tuple[int, dict[str, Any]] | None:
        """The first of ``trainer.resume``'s candidates from ``start`` on that loads and continues
        this trajectory, as ``(index, checkpoint)``; ``None`` to start fresh."""
        tr = self.cfg.trainer
        if tr.init_from:
            return None
        self.candidates = resume_candidates(tr.resume, self.run_dir)
        for i in range(start, len(self.candidates)):
            path = self.candidates[i]
            try:
                saved = load_checkpoint(path, map_location=self.ctx.device, require_training_state=True)
                check_same_trajectory(saved["config"], self.resolved, path)
                return i, saved
            except IncompatibleCheckpoint:
                raise
            except CheckpointError as exc:
                if i == len(self.candidates) - 1:
                    raise
                self._fall_back(i, exc)
        return None

    def _fall_back(self, index: int, exc: CheckpointError) -> None:
        """A corrupt or unfit ``last.pt`` is renamed aside (rank 0 only), so the next save cannot
        rotate it over the good backup resume falls back to."""
        path = self.candidates[index]
        moved = quarantine(path) if self.ctx.main_rank and path.name == "last.pt" and path.exists() else path
        log.warning("%s; falling back to %s (the bad file is now %s)", exc, self.candidates[index + 1], moved)

    def _apply(self, saved: dict[str, Any], path: Path) -> None:
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            reason = one_line(exc)[:200]
            raise CheckpointError(f"checkpoint {path} does not fit this run ({reason})") from None
        st = self.state = RunState.from_checkpoint(saved, self.ctx.main_rank)
        partial = f" + {st.progress.batches} batches" if st.progress.batches else ""
        log.info("resumed from %s after epoch %d%s (step %d)", path, st.epoch, partial, st.step)
