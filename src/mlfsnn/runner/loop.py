"""One training epoch and one evaluation pass, read top to bottom.

STBP: backpropagation through time with the MLF surrogate gradient; the loss is cross-entropy on
the time-averaged logits (docs/method.md §4-5). Every rank takes the same decisions (a non-finite
loss, a stop request), so a data-parallel job never deadlocks on one rank leaving early.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..nn import NeuronMonitor, SynapticOps
from ..nn.observe import add_grad_norms
from .context import Context
from .distributed import all_reduce_sum
from .preemption import PreemptionGuard

__all__ = ["EpochProgress", "NonFiniteLoss", "epoch_metrics", "evaluate", "train_one_epoch"]


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


def _agree(ctx: Context, loss: torch.Tensor, guard: PreemptionGuard | None) -> tuple[bool, bool]:
    """(loss not finite on some rank, stop requested on some rank): every rank decides alike."""
    flags = [float(not torch.isfinite(loss).item()), float(guard is not None and guard.requested)]
    bad, stop = all_reduce_sum(flags, ctx.device)
    return bad > 0, stop > 0


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

    ``progress`` is updated in place. Returns the global step and whether a stop request cut the
    epoch short.
    """
    model.train()
    tr = ctx.cfg.trainer
    start = time.perf_counter() - progress.time_s
    bar = ctx.progress(loader, f"epoch {epoch}")
    for x, y in bar:
        if tr.max_steps is not None and step >= tr.max_steps:
            break
        x, y = ctx.to_model_input(x), y.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        if _agree(ctx, loss, None)[0]:
            raise NonFiniteLoss(f"loss is not finite ({loss.item()}) at epoch {epoch}, step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if tr.grad_clip is not None or tr.log_grad_norms:
            scaler.unscale_(optimizer)
        if tr.log_grad_norms:
            add_grad_norms(model, progress.grad_norm_sum)
        if tr.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        progress.batches += 1
        progress.loss_sum += loss.item() * y.shape[0]
        progress.correct += (logits.argmax(1) == y).sum().item()
        progress.seen += y.shape[0]
        progress.time_s = time.perf_counter() - start
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                loss=f"{progress.loss_sum / progress.seen:.4f}",
                acc=f"{100 * progress.correct / progress.seen:.2f}",
                sps=f"{progress.seen / max(progress.time_s, 1e-9):.1f}",
            )
        if guard is not None and _agree(ctx, loss.detach(), guard)[1]:
            return step, True
    return step, False


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
    model: nn.Module, loader: DataLoader, ctx: Context, observe: bool = True, split: str = "test"
) -> dict[str, Any]:
    """``<split>_loss``, ``<split>_acc`` (%) and, when ``observe``, per-layer firing rate, dormant
    ratio and SOPs."""
    model.eval()
    total_loss = correct = seen = 0.0
    monitor, sops = NeuronMonitor(model, dormant=True), SynapticOps(model)
    with contextlib.ExitStack() as stack:
        if observe:
            stack.enter_context(monitor)
            stack.enter_context(sops)
        for x, y in loader:
            x, y = ctx.to_model_input(x), y.to(ctx.device, non_blocking=True)
            with ctx.autocast():
                logits = model(x)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.shape[0]
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], ctx.device)
    seen = max(seen, 1.0)
    out: dict[str, Any] = {f"{split}_loss": total_loss / seen, f"{split}_acc": 100.0 * correct / seen}
    if observe:
        _reduce_observations(monitor, sops, ctx)
        out["firing_rate"] = monitor.firing_rate()
        out["dormant_ratio"] = monitor.dormant_ratio()
        out["sops_per_sample"] = sops.sops_per_sample()
        out["ann_macs_per_sample"] = sops.ann_macs_per_sample()
    return out


def _reduce_observations(monitor: NeuronMonitor, sops: SynapticOps, ctx: Context) -> None:
    """Sum every rank's neuron statistics and SOPs into each rank's monitors (no-op on one process)."""
    if ctx.world_size <= 1:
        return
    names = list(monitor.stats)
    values = []
    for n in names:
        st = monitor.stats[n]
        values += [float(st.spikes), st.neuron_steps, float(st.dormant), st.units, st.samples]
    values += [float(v) for v in sops.sops.values()] + [sops.samples]
    values = all_reduce_sum(values, ctx.device)
    for i, n in enumerate(names):
        st = monitor.stats[n]
        st.spikes, st.neuron_steps, st.dormant, st.units, st.samples = values[5 * i : 5 * i + 5]
    rest = values[5 * len(names) :]
    sops.sops = dict(zip(sops.sops, rest[:-1], strict=True))
    sops.samples = int(rest[-1])
