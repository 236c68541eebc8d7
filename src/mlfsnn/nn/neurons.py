"""The multi-level firing (MLF) LIF neuron and its surrogate gradient.

One MLF unit is K LIF "levels" that share the input current ``x[t]`` but keep their own membrane
potential and their own hard reset (docs/method.md §1). Per level ``k = 0 .. K-1``::

    u_k[t] = decay * u_k[t-1] * (1 - o_k[t-1]) + x[t]        u_k[-1] = 0, o_k[-1] = 0
    o_k[t] = H(u_k[t] - th_k),   H(v) = 1 if v > 0 else 0     (strict '>')
    th_k   = threshold + k * width
    s[t]   = sum_k o_k[t]                                      (a count in 0..K)

Surrogate: ``dH/du = 1[|u - th_k| < width / 2] / width``; the windows of neighbouring levels touch, so
the region with a gradient grows from ``width`` to ``K * width``. The gradient also flows through the
reset term ``(1 - o_k[t-1])`` unless ``detach_reset``.

Three implementations sit behind :func:`mlf`:

* :func:`mlf_reference` - the equations written out, one autograd op chain per level per step (the
  authors' formulation). It is the ground truth the tests and benchmarks compare against.
* :class:`_MLFFunction` - all levels vectorised and one autograd node for the whole time loop with
  a hand-derived backward through time. It saves only the input and recomputes the potentials in
  backward, so a layer's activation memory does not grow with K.
* :mod:`mlfsnn.kernels` - the same derivation as compiled kernels (C/OpenMP on CPU, Triton on CUDA);
  the default, with this module's vectorised path as the fallback.

All produce bit-identical spikes: they evaluate ``(decay * u) * (1 - o) + x`` in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import kernels
from ._args import ArgError

__all__ = ["MLF", "SpikeFn", "check_neuron_args", "level_thresholds", "mlf", "mlf_reference"]


def _real(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def check_neuron_args(levels: Any, threshold: Any, width: Any, decay: Any) -> None:
    """Raise :class:`~mlfsnn.nn._args.ArgError` (a ``ValueError``) naming the argument and what is allowed."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ArgError("levels", levels, "an integer >= 1")
    if not _real(threshold) or not math.isfinite(threshold):
        raise ArgError("threshold", threshold, "a finite real number")
    if not _real(width) or not 0 < width < math.inf:
        raise ArgError("width", width, "a finite number > 0")
    if not _real(decay) or not 0.0 <= decay <= 1.0:
        raise ArgError("decay", decay, "a number in [0, 1]")


def level_thresholds(levels: int, threshold: float, width: float) -> list[float]:
    """``th_k = threshold + k * width`` for ``k = 0 .. levels-1`` (0.6, 1.6, 2.6 for the paper)."""
    return [threshold + k * width for k in range(levels)]


class SpikeFn(torch.autograd.Function):
    """Heaviside step ``u > th`` with the rectangular surrogate ``1[|u - th| < width/2] / width``."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, th: float, width: float) -> Tensor:
        ctx.save_for_backward(u)
        ctx.th, ctx.width = th, width
        return (u > th).to(u.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (u,) = ctx.saved_tensors
        window = (u - ctx.th).abs() < (ctx.width / 2)
        return grad * (window / ctx.width), None, None


def mlf_reference(
    x: Tensor,
    levels: int = 3,
    threshold: float = 0.6,
    width: float = 1.0,
    decay: float = 0.25,
    detach_reset: bool = False,
) -> Tensor:
    """The MLF equations, level by level and step by step (slow; the ground truth).

    ``x``: input currents ``[T, ...]``; returns spike counts of the same shape and dtype.
    """
    check_neuron_args(levels, threshold, width, decay)
    outs = []
    us = [torch.zeros_like(x[0]) for _ in range(levels)]
    os_ = [torch.zeros_like(x[0]) for _ in range(levels)]
    ths = level_thresholds(levels, threshold, width)
    for t in range(x.shape[0]):
        s = torch.zeros_like(x[0])
        for k in range(levels):
            reset = os_[k].detach() if detach_reset else os_[k]
            us[k] = decay * us[k] * (1 - reset) + x[t]
            os_[k] = SpikeFn.apply(us[k], ths[k], width)
            s = s + os_[k]
        outs.append(s)
    return torch.stack(outs)


def _scan(x: Tensor, th: Tensor, decay: float, keep_potentials: bool = False) -> tuple[Tensor, Tensor | None]:
    """Forward through time for all levels at once: the one loop every PyTorch path shares.

    ``x``: ``[T, N]``, ``th``: ``[K, 1]``. Returns spike counts ``[T, N]`` and, with
    ``keep_potentials``, the potentials ``[T, K, N]`` (what backward and the dormant statistic need;
    plain inference keeps none). The arithmetic order matches :func:`mlf_reference`, so the spikes
    are identical.
    """
    steps, n = x.shape
    u_all = x.new_empty(steps, th.shape[0], n) if keep_potentials else None
    u = x.new_zeros(th.shape[0], n)
    keep = x.new_ones(th.shape[0], n)  # 1 - o[t-1]
    out = x.new_empty(steps, n)
    for t in range(steps):
        u = decay * u * keep + x[t]
        fired = u > th
        out[t] = fired.sum(0)
        keep = (~fired).to(x.dtype)
        if u_all is not None:
            u_all[t] = u
    return out, u_all


class _MLFFunction(torch.autograd.Function):
    """Whole-sequence MLF with a hand-derived backward through time.

    With ``delta_k[t] = dL/du_k[t]`` (total), ``g[t] = dL/ds[t]``, ``h_k[t]`` the surrogate and
    ``o_k[t]`` the spikes, differentiating ``u_k[t+1] = (decay * u_k[t]) * (1 - o_k[t]) + x[t+1]``::

        dL/do_k[t] = g[t] - decay * u_k[t] * delta_k[t+1]        (second term: the reset path)
        delta_k[t] = h_k[t] * dL/do_k[t] + decay * (1 - o_k[t]) * delta_k[t+1]
        dL/dx[t]   = sum_k delta_k[t]
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, th: Tensor, width: float, decay: float, detach_reset: bool) -> Tensor:
        out, _ = _scan(x, th, decay)
        ctx.save_for_backward(x, th)
        ctx.width, ctx.decay, ctx.detach_reset = width, decay, detach_reset
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, th = ctx.saved_tensors
        width, decay = ctx.width, ctx.decay
        _, u_all = _scan(
            x, th, decay, keep_potentials=True
        )  # recomputed: cheaper in memory than saving K potentials
        grad_x = torch.empty_like(x)
        delta = x.new_zeros(u_all.shape[1:])
        half = width / 2
        for t in range(x.shape[0] - 1, -1, -1):
            u = u_all[t]
            h = ((u - th).abs() < half) / width
            d_o = grad_out[t]
            if not ctx.detach_reset:
                d_o = d_o - decay * u * delta
            delta = d_o * h + decay * (u <= th) * delta
            grad_x[t] = delta.sum(0)
        return grad_x, None, None, None, None


MLF_BACKENDS = ("auto", "fused", "vectorized", "reference")


def mlf(
    x: Tensor,
    levels: int = 3,
    threshold: float = 0.6,
    width: float = 1.0,
    decay: float = 0.25,
    detach_reset: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Functional MLF over ``x: [T, ...]``; returns spike counts in ``x.dtype``.

    Potentials are kept in fp32 for fp32/bf16/fp16 input (half-precision membranes would drift) and
    in fp64 for fp64 input (the vectorised path; the kernels are fp32); the counts ``0..K`` are exact
    in every float dtype.

    ``backend``: ``"auto"`` uses the fused kernel (:mod:`mlfsnn.kernels`: C/OpenMP on CPU, Triton
    on CUDA) and falls back to ``"vectorized"`` with a one-time warning where it cannot run;
    ``"fused"`` raises instead of falling back; ``"vectorized"`` is :class:`_MLFFunction`;
    ``"reference"`` is :func:`mlf_reference` on the fp32 input. All give identical spikes.
    """
    if x.dim() < 1:
        raise ValueError(f"x must have a leading time dimension, got shape {tuple(x.shape)}")
    if backend not in MLF_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(MLF_BACKENDS)}, got {backend!r}")
    check_neuron_args(levels, threshold, width, decay)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    if backend == "reference":
        return mlf_reference(x.to(compute), levels, threshold, width, decay, detach_reset).to(x.dtype)
    if backend in ("auto", "fused") and compute == torch.float32:
        ths = level_thresholds(levels, threshold, width)
        auto = backend == "auto"
        out = kernels.fused_mlf(x, ths, float(width), float(decay), bool(detach_reset), warn=auto)
        if out is not None:
            return out
        if backend == "fused":
            raise RuntimeError(f"fused MLF kernel unavailable: {kernels.fused_unavailable_reason(x.device)}")
    shape, dtype = x.shape, x.dtype
    flat = x.reshape(shape[0], -1).to(compute)
    th = torch.tensor(level_thresholds(levels, threshold, width), dtype=flat.dtype, device=x.device)
    th = th.unsqueeze(1)
    if torch.is_grad_enabled() and x.requires_grad:
        out = _MLFFunction.apply(flat, th, float(width), float(decay), bool(detach_reset))
    else:
        out, _ = _scan(flat, th, float(decay))
    return out.reshape(shape).to(dtype)


def mlf_window_mask(
    x: Tensor, levels: int, threshold: float, width: float, decay: float
) -> tuple[Tensor, Tensor]:
    """Spike counts and, per step, whether any level's potential is inside its surrogate window
    (``|u_k[t] - th_k| < width / 2``: the step's spikes pass a gradient), without gradient.

    ``x: [T, ...]``; both results have its shape.
    """
    with torch.no_grad():
        flat = x.reshape(x.shape[0], -1).float()
        th = torch.tensor(level_thresholds(levels, threshold, width), dtype=flat.dtype, device=x.device)
        out, u_all = _scan(flat, th.unsqueeze(1), float(decay), keep_potentials=True)
        in_window = ((u_all - th.view(1, -1, 1)).abs() < width / 2).any(dim=1)
    return out.reshape(x.shape), in_window.reshape(x.shape)


def mlf_dormant_mask(
    x: Tensor, levels: int, threshold: float, width: float, decay: float
) -> tuple[Tensor, Tensor]:
    """Spike counts and a mask of dormant units (docs/method.md §8), without gradient.

    A unit is dormant when, at every step, every level's potential is outside its surrogate window,
    so no gradient can pass through it. ``x: [T, ...]``; the mask has shape ``x.shape[1:]``.
    """
    out, in_window = mlf_window_mask(x, levels, threshold, width, decay)
    return out, ~in_window.any(dim=0)


class MLF(nn.Module):
    """Multi-level firing LIF neuron over multi-step input ``[T, B, ...]`` (time first).

    Stateless: every call starts from zero potential, so there is nothing to reset between
    batches. ``levels=1`` is the plain LIF neuron of the paper's baseline.

    Args:
        levels: K, the number of LIF levels (>= 1).
        threshold: firing threshold of the first level; level k fires above ``threshold + k*width``.
        width: surrogate window width ``a`` (> 0), also the spacing of the level thresholds.
        decay: membrane leak factor ``tau`` used as a multiplier, in [0, 1].
        detach_reset: stop the gradient through the reset term ``(1 - o[t-1])``.
    """

    def __init__(
        self,
        levels: int = 3,
        threshold: float = 0.6,
        width: float = 1.0,
        decay: float = 0.25,
        detach_reset: bool = False,
    ) -> None:
        super().__init__()
        check_neuron_args(levels, threshold, width, decay)
        self.levels = levels
        self.threshold = float(threshold)
        self.width = float(width)
        self.decay = float(decay)
        self.detach_reset = bool(detach_reset)

    def forward(self, x: Tensor) -> Tensor:
        # Observers (mlfsnn.nn.observe) attach with register_forward_hook, torch's public hook.
        return mlf(x, self.levels, self.threshold, self.width, self.decay, self.detach_reset)

    @property
    def thresholds(self) -> Sequence[float]:
        return level_thresholds(self.levels, self.threshold, self.width)

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, threshold={self.threshold}, width={self.width}, "
            f"decay={self.decay}, detach_reset={self.detach_reset}"
        )
