"""The debugging switches of a run, which configs/debug/ presets set (``debug=default|fdr|overfit|profile``).

* ``trainer.detect_anomaly``: autograd's anomaly detection around training; a NaN/inf gradient is
  raised where its forward op was built.
* ``trainer.fast_dev_run``: the run goes through every stage but writes no record of itself: no
  checkpoint, no logger, no metrics.jsonl or summary.json. What they would hold is logged instead.
* ``trainer.stop_at_train_acc``: the run ends after the first epoch whose training accuracy reaches
  it, and says whether (and when) it did; ``debug=overfit`` trains on 64 samples with it.
* ``trainer.profile_steps``: that many training steps are recorded by ``torch.profiler`` (after one
  skipped and one warm-up step): ``<run dir>/profile/trace.json`` (Chrome trace format) and
  ``profile/ops.txt``, the top operators by self time and mlfsnn's own, also logged at the end.

The Trainer calls :class:`Debug` at five points (fit, the epoch's end, a checkpoint, the summary,
the end); with every switch off each call is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, UserError
from ..files import LinkRefused, atomic_write_text, ensure_dir, os_reason
from ..nn import MLF, TdBatchNorm
from .loggers import chosen_loggers
from .outputs import _clean

__all__ = ["PROFILE_FOLDER", "Debug", "layer_labels"]

log = logging.getLogger("mlfsnn")

PROFILE_FOLDER = "profile"
_SKIP, _WARMUP = 1, 1  # profiler schedule: the first step pays one-off costs (kernel compile, caches)
_ROWS = 20


def _preset() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("debug")


@contextlib.contextmanager
def layer_labels() -> Iterator[None]:
    """Name the MLF and TdBatchNorm layer calls in a profile (``mlfsnn::MLF``, ``mlfsnn::TdBatchNorm``).

    The classes' ``forward`` is wrapped in a ``record_function`` while the block runs, and restored
    after. No module hook is added: hooks switch off the fused tdBN + MLF kernel (nn/fused.py), which
    a profile must see as training runs it (it appears as ``mlfsnn::tdbn_mlf_forward`` / ``_backward``).
    """
    originals = {cls: cls.forward for cls in (MLF, TdBatchNorm)}

    def labelled(cls: type, forward: Any) -> Any:
        name = f"mlfsnn::{cls.__name__}"

        def forward_labelled(self: Any, *args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(name):
                return forward(self, *args, **kwargs)

        return forward_labelled

    try:
        for cls, forward in originals.items():
            cls.forward = labelled(cls, forward)
        yield
    finally:
        for cls, forward in originals.items():
            cls.forward = forward


class Debug:
    """The ``trainer.*`` debugging switches of one run, read once."""

    def __init__(self, cfg: Any) -> None:
        tr = cfg.trainer
        self.cfg = cfg
        self.fast_dev_run = bool(tr.get("fast_dev_run", False))
        self.detect_anomaly = bool(tr.get("detect_anomaly", False))
        self.stop_acc = tr.get("stop_at_train_acc")
        self.profile_steps = tr.get("profile_steps")
        preset = _preset()
        self.label = f"debug={preset}" if preset else "trainer"
        self.skipped: list[str] = []  # checkpoints a fast dev run did not write
        self.profile_text: str | None = None
        self.profile_dir: Path | None = None

    # --- around training ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, trainer: Any) -> Iterator[None]:
        """Anomaly detection and the profiler around the epochs (both off unless asked for)."""
        with contextlib.ExitStack() as stack:
            if self.detect_anomaly:
                log.info("%s: autograd anomaly detection is on (slower)", self.label)
                with warnings.catch_warnings():  # torch's own "will increase the runtime" warning
                    warnings.simplefilter("ignore", UserWarning)
                    anomaly = torch.autograd.detect_anomaly(check_nan=True)
                stack.enter_context(anomaly)
            if self.profile_steps and trainer.ctx.main_rank:
                stack.enter_context(self._profiling(trainer.run_dir, trainer.ctx.device))
            yield

    @contextlib.contextmanager
    def _profiling(self, run_dir: Path, device: torch.device) -> Iterator[None]:
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from torch.profiler import ProfilerActivity, profile, schedule

        try:
            folder = ensure_dir(run_dir / PROFILE_FOLDER)
        except LinkRefused as exc:
            raise ConfigError(f"trainer.profile_steps: {exc}") from None
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        plan = schedule(wait=_SKIP, warmup=_WARMUP, active=int(self.profile_steps), repeat=1)
        log.info(
            "%s: profiling training steps %d-%d with torch.profiler",
            self.label,
            _SKIP + _WARMUP + 1,
            _SKIP + _WARMUP + int(self.profile_steps),
        )
        with (
            layer_labels(),
            profile(
                activities=activities, schedule=plan, on_trace_ready=lambda p: self._export(p, folder, device)
            ) as prof,
        ):
            # One profiler step per optimizer step, without a hook in the training loop.
            handle = register_optimizer_step_post_hook(lambda *_: prof.step())
            try:
                yield
            finally:
                handle.remove()

    def _export(self, prof: Any, folder: Path, device: torch.device) -> None:
        """The trace (written under a temp name, then renamed) and the operator tables."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".trace.json.", suffix=".tmp", dir=folder)
            os.close(fd)
            try:
                prof.export_chrome_trace(tmp)
                os.replace(tmp, folder / "trace.json")
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write {folder / 'trace.json'}: {os_reason(exc, folder)}") from None
        events = prof.key_averages()
        on_device = device.type == "cuda"
        sort = "self_device_time_total" if on_device else "self_cpu_time_total"
        ours = sorted((e for e in events if e.key.startswith("mlfsnn::")), key=lambda e: -e.cpu_time_total)
        lines = [f"top {_ROWS} operators by self {'device' if on_device else 'CPU'} time:"]
        lines.append(events.table(sort_by=sort, row_limit=_ROWS))
        lines.append("mlfsnn operators and layers (tdbn_mlf: the fused tdBN + MLF kernel):")
        lines.append(f"  {'name':<32} {'calls':>6} {'CPU total ms':>13} {'self CPU ms':>12}")
        for e in ours:
            total, own = e.cpu_time_total / 1e3, e.self_cpu_time_total / 1e3
            lines.append(f"  {e.key:<32} {e.count:>6} {total:>13.3f} {own:>12.3f}")
        if not any(e.key in ("mlfsnn::MLF", "mlfsnn::TdBatchNorm") for e in ours):
            lines.append("  (no separate MLF / TdBatchNorm call: every pair ran in the fused kernel)")
        self.profile_text = "\n".join(lines)
        try:
            atomic_write_text(folder / "ops.txt", self.profile_text + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {folder / 'ops.txt'}: {os_reason(exc, folder)}") from None
        self.profile_dir = folder

    # --- hooks the trainer calls ---------------------------------------------------------------------

    def reached(self, row: dict[str, Any]) -> bool:
        """Whether the epoch of ``row`` reached ``trainer.stop_at_train_acc`` (the run then ends)."""
        return self.stop_acc is not None and row.get("train_acc", -1.0) >= self.stop_acc

    def skip_checkpoint(self, path: Path) -> bool:
        """A fast dev run writes no checkpoint: note it and return True."""
        if self.fast_dev_run:
            self.skipped.append(f"{path.parent.name}/{path.name}")
        return self.fast_dev_run

    def writes(self, main: bool) -> bool:
        """Whether this process writes the run's record (metrics.jsonl, summary.json, loggers)."""
        return main and not self.fast_dev_run

    def report(self, trainer: Any, summary: dict[str, Any]) -> None:
        """At the end (rank 0): what a fast dev run would have written, the overfit result, the profile."""
        if not trainer.ctx.main_rank:
            return
        if self.fast_dev_run:
            self._report_fdr(trainer, summary)
        if self.stop_acc is not None:
            self._report_overfit(trainer.metrics.history)
        if self.profile_steps:
            if self.profile_text is None:
                log.warning(
                    "%s: the run ended before a profiled step (it needs %d training steps); nothing recorded",
                    self.label,
                    _SKIP + _WARMUP + 1,
                )
            else:
                log.info("%s: trace written to %s\n%s", self.label, self.profile_dir, self.profile_text)

    def _report_fdr(self, trainer: Any, summary: dict[str, Any]) -> None:
        rows = trainer.metrics.history
        shown = {k: v for k, v in summary.items() if k != "config"}
        loggers = ", ".join(f"{n}/" for n in chosen_loggers(self.cfg)) or "none chosen"
        lines = [
            f"{self.label}: nothing was written but train.log and .hydra/; a run would write:",
            f"  metrics.jsonl, {len(rows)} row(s):",
            *(f"    {json.dumps(_clean(row), allow_nan=False)}" for row in rows),
            f"  summary.json (and its resolved config): {json.dumps(_clean(shown), allow_nan=False)}",
            f"  {', '.join(dict.fromkeys(self.skipped)) or 'no checkpoint'} "
            f"({trainer.num_params:,} parameters, optimizer, scheduler and RNG states)",
            f"  the loggers' files: {loggers}",
        ]
        log.info("\n".join(lines))

    def _report_overfit(self, history: list[dict[str, Any]]) -> None:
        accs = [(row.get("train_acc", 0.0), row["epoch"]) for row in history]
        if not accs:
            return
        first = next(((a, e) for a, e in accs if a >= self.stop_acc), None)
        if first is not None:
            log.info(
                "%s: training accuracy %.2f%% at epoch %d (target %g%%): the net, the surrogate gradient "
                "and the optimizer fit these samples",
                *(self.label, first[0], first[1], self.stop_acc),
            )
            return
        best, epoch = max(accs)
        log.warning(
            "%s: training accuracy reached only %.2f%% (epoch %d) in %d epochs, short of %g%%: the net "
            "cannot fit these samples; look at optimizer.lr, neuron.width (the surrogate window), "
            "neuron.threshold and the data",
            *(self.label, best, epoch, len(accs), self.stop_acc),
        )
