"""One training epoch and one evaluation pass, read top to bottom.

STBP: backpropagation through time with the MLF surrogate gradient; the loss is cross-entropy on
the time-averaged logits (docs/method.md §4-5). Every rank takes the same decisions (a non-finite
loss, a stop request), so a data-parallel job never deadlocks on one rank leaving early.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..nn import NeuronMonitor, SynapticOps
from ..nn.observe import E_AC_PJ, E_MAC_PJ, add_grad_norms
from .context import Context
from .distributed import all_reduce_sum
from .preemption import PreemptionGuard, held

__all__ = [
    "EpochProgress",
    "NonFiniteLoss",
    "epoch_metrics",
    "evaluate",
    "release_workers",
    "train_one_epoch",
]


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class EpochProgress:
    """Running sums of the epoch in progress (what a mid-epoch checkpoint must carry)."""

    batches: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    time_s: float = 0.0
    grad_norm_sum: dict[str, float] = field(default_factory=dict)  # trainer.log_grad_norms


@dataclass
class _Pending:
    """Per-step values still on the device; the host reads them once per flush, not once per step."""

    losses: list[torch.Tensor] = field(default_factory=list)
    correct: list[torch.Tensor] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.losses.append(loss.detach().float())
        self.correct.append((logits.detach().argmax(1) == y).sum())
        self.sizes.append(y.shape[0])

    def read(self) -> tuple[list[float], list[float]]:
        """The pending losses and correct counts as Python numbers: one device-to-host copy."""
        if not self.losses:
            return [], []
        n = len(self.losses)
        both = torch.cat([torch.stack(self.losses), torch.stack(self.correct).float()]).tolist()
        return both[:n], both[n:]


def _flush(
    pending: _Pending,
    progress: EpochProgress,
    ctx: Context,
    epoch: int,
    step: int,
    guard: PreemptionGuard | None,
) -> bool:
    """Read the pending steps (one device-to-host copy), add them to ``progress`` and agree across
    ranks (one all-reduce) on a non-finite loss (raised) and on a stop request (returned)."""
    losses, correct = pending.read()
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    flags = [float(bad is not None), float(guard is not None and guard.requested)]
    if ctx.world_size > 1:
        flags = all_reduce_sum(flags, ctx.device)
    if flags[0] > 0:
        where = (
            f"({losses[bad]}) at epoch {epoch}, step {step - len(losses) + bad + 1}"
            if bad is not None
            else f"on another rank in epoch {epoch}, steps {step - len(losses) + 1}-{step}"
        )
        raise NonFiniteLoss(f"loss is not finite {where}")
    for loss, hits, size in zip(losses, correct, pending.sizes, strict=True):
        progress.loss_sum += loss * size
        progress.correct += hits
        progress.seen += size
    progress.batches += len(losses)
    pending.losses, pending.correct, pending.sizes = [], [], []
    return flags[1] > 0


def sync_interval(ctx: Context) -> int:
    """Steps between host reads of the running sums and the stop flag (``trainer.sync_every``).

    ``auto``: every step on CPU, where a read costs nothing (the host computed the values itself);
    every 16 steps on an accelerator, where each read would stall the device's queue of work.
    """
    every = ctx.cfg.trainer.get("sync_every", "auto")
    if every == "auto":
        return 1 if ctx.device.type == "cpu" else 16
    return int(every)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ctx: Context,
    epoch: int,
    step: int,
    progress: EpochProgress,
    guard: PreemptionGuard | None = None,
) -> tuple[int, bool]:
    """Train until the loader ends, ``max_steps`` is reached or a stop is requested.

    ``progress`` is updated in place at every flush (every ``sync_interval`` steps and at the end).
    Returns the global step and whether a stop request cut the epoch short. A non-finite loss is
    found at the next flush: the weights it corrupted are never checkpointed (NonFiniteLoss).
    """
    model.train()
    pending = _Pending()
    # The iterator is ours, not the for loop's: its workers are shut down below, where a second
    # Ctrl-C is held (raised inside DataLoader.__del__ it would only print "Exception ignored").
    batches = iter(loader)
    bar = ctx.progress(batches, f"epoch {epoch}", total=_length(loader))
    try:
        return _run_batches(model, bar, optimizer, scaler, ctx, epoch, step, progress, guard, pending)
    finally:
        with held(guard):
            del bar, batches


def release_workers(loader: DataLoader | None, guard: PreemptionGuard | None) -> None:
    """Shut down a loader's persistent workers now, where a second Ctrl-C is held: left to garbage
    collection after the run, a Ctrl-C during their shutdown would print a traceback from
    ``DataLoader.__del__`` (``_iterator`` is where DataLoader keeps them)."""
    if loader is None or getattr(loader, "_iterator", None) is None:
        return
    with held(guard):
        loader._iterator = None  # the last reference: the workers are joined here


def _length(loader: DataLoader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable dataset without a length
        return None


def _run_batches(
    model: nn.Module,
    bar: Iterable,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ctx: Context,
    epoch: int,
    step: int,
    progress: EpochProgress,
    guard: PreemptionGuard | None,
    pending: _Pending,
) -> tuple[int, bool]:
    tr = ctx.cfg.trainer
    every = sync_interval(ctx)
    start = time.perf_counter() - progress.time_s
    for x, y in bar:
        if tr.max_steps is not None and step >= tr.max_steps:
            break
        x, y = ctx.to_model_input(x), y.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if tr.grad_clip is not None or tr.log_grad_norms:
            scaler.unscale_(optimizer)
        if tr.log_grad_norms:
            add_grad_norms(model, progress.grad_norm_sum)  # one host read per step, when asked for
        if tr.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        pending.add(loss, logits, y)
        if len(pending.losses) >= every:
            stop = _flush(pending, progress, ctx, epoch, step, guard)
            progress.time_s = time.perf_counter() - start
            _show(bar, progress)
            if stop:
                return step, True
    stop = bool(pending.losses) and _flush(pending, progress, ctx, epoch, step, guard)
    progress.time_s = time.perf_counter() - start
    return step, stop


def _show(bar: Any, progress: EpochProgress) -> None:
    if hasattr(bar, "set_postfix") and progress.seen:
        bar.set_postfix(
            loss=f"{progress.loss_sum / progress.seen:.4f}",
            acc=f"{100 * progress.correct / progress.seen:.2f}",
            sps=f"{progress.seen / max(progress.time_s, 1e-9):.1f}",
        )


def epoch_metrics(progress: EpochProgress, ctx: Context) -> dict[str, Any]:
    """Train loss, accuracy and throughput of a finished epoch, summed over every rank."""
    loss_sum, correct, seen = all_reduce_sum([progress.loss_sum, progress.correct, progress.seen], ctx.device)
    seen = max(seen, 1.0)
    out: dict[str, Any] = {
        "train_loss": loss_sum / seen,
        "train_acc": 100.0 * correct / seen,
        "train_samples_per_s": seen / max(progress.time_s, 1e-9),
    }
    if progress.grad_norm_sum:  # gradients are identical on every rank after DDP's all-reduce
        out["grad_norm"] = {k: v / max(progress.batches, 1) for k, v in progress.grad_norm_sum.items()}
    return out


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    ctx: Context,
    observe: bool = True,
    split: str = "test",
    readings: bool = False,
) -> dict[str, Any]:
    """``<split>_loss``, ``<split>_acc`` (%) and, when ``observe``, per-layer firing rate, dormant
    ratio, SOPs and the energy estimate (:meth:`~mlfsnn.nn.observe.SynapticOps.energy_metrics`);
    ``readings`` (one process only) adds ``dormant_readings``
    (:meth:`~mlfsnn.nn.observe.NeuronMonitor.readings`)."""
    model.eval()
    seen = 0.0
    pending = _Pending()  # batch sums stay on the device: one host read after the last batch
    readings = readings and ctx.world_size <= 1  # its per-neuron sets are not reduced across ranks
    monitor, sops = NeuronMonitor(model, dormant=True, readings=readings), SynapticOps(model)
    with contextlib.ExitStack() as stack:
        if observe:
            stack.enter_context(monitor)
            stack.enter_context(sops)
        for x, y in loader:
            x, y = ctx.to_model_input(x), y.to(ctx.device, non_blocking=True)
            with ctx.autocast():
                logits = model(x)
            pending.add(F.cross_entropy(logits.float(), y, reduction="sum"), logits, y)
            seen += y.shape[0]
    losses, hits = pending.read()
    total_loss, correct, seen = all_reduce_sum([sum(losses), sum(hits), seen], ctx.device)
    seen = max(seen, 1.0)
    out: dict[str, Any] = {f"{split}_loss": total_loss / seen, f"{split}_acc": 100.0 * correct / seen}
    if observe:
        _reduce_observations(monitor, sops, ctx)
        out["firing_rate"] = monitor.firing_rate()
        out["dormant_ratio"] = monitor.dormant_ratio()
        if readings:
            out["dormant_readings"] = monitor.readings()
        energy = ctx.cfg.get("energy") or {}  # configs stored before the energy keys have none
        out.update(sops.energy_metrics(energy.get("e_ac_pj", E_AC_PJ), energy.get("e_mac_pj", E_MAC_PJ)))
    return out


def _reduce_observations(monitor: NeuronMonitor, sops: SynapticOps, ctx: Context) -> None:
    """Sum every rank's neuron statistics, SOPs (per level and per event) and real-valued MACs into
    each rank's monitors (no-op on one process)."""
    if ctx.world_size <= 1:
        return
    names = list(monitor.stats)
    values = []
    for n in names:
        st = monitor.stats[n]
        values += [float(st.spikes), st.neuron_steps, float(st.dormant), st.units, st.samples]
    layers = list(sops.layers)  # the three SOP / MAC sums are keyed by every Conv2d / Linear layer
    for sums in (sops.sops, sops.events, sops.real_macs):
        values += [float(sums[k]) for k in layers]
    values = all_reduce_sum([*values, sops.samples], ctx.device)
    for i, n in enumerate(names):
        st = monitor.stats[n]
        st.spikes, st.neuron_steps, st.dormant, st.units, st.samples = values[5 * i : 5 * i + 5]
    at, k = 5 * len(names), len(layers)
    sops.sops, sops.events, sops.real_macs = (
        dict(zip(layers, values[at + j * k : at + (j + 1) * k], strict=True)) for j in range(3)
    )
    sops.samples = int(values[-1])
