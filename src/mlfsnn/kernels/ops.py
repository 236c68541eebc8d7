"""The fused MLF kernels as ``torch.library`` custom operators.

Why custom ops: a ``torch.autograd.Function`` calling ctypes or a Triton launch is opaque to
``torch.compile``, which then breaks the graph at every neuron layer. A custom op has a schema, a
fake (meta) implementation that gives output shapes without running the kernel, and a registered
backward, so Dynamo traces a whole DS-ResNet into one graph and AOTAutograd places the backward op.

    mlfsnn::mlf_forward(x, thresholds, width, decay, detach_reset) -> spikes
    mlfsnn::mlf_backward(x, grad, thresholds, width, decay, detach_reset) -> grad_x

``x`` is ``[T, N]`` fp32 contiguous on CPU (C/OpenMP kernel) or CUDA (Triton kernel). The forward
op carries ``width`` and ``detach_reset`` only so that its backward can read them. Both ops call the
same kernels as before, so spikes and gradients are bit-identical to the eager path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .cpu import (
    mlf_backward_cpu,
    mlf_forward_cpu,
    tdbn_input_grad_cpu,
    tdbn_mlf_backward_cpu,
    tdbn_mlf_forward_cpu,
)

__all__ = ["mlf_backward_op", "mlf_forward_op", "tdbn_mlf_backward_op", "tdbn_mlf_forward_op"]


@torch.library.custom_op("mlfsnn::mlf_forward", mutates_args=())
def mlf_forward_op(
    x: Tensor, thresholds: list[float], width: float, decay: float, detach_reset: bool
) -> Tensor:
    """Spike counts of ``x: [T, N]``."""
    if x.is_cuda:
        from .triton_mlf import mlf_forward_cuda  # lazily: triton is heavy and absent on many CPU installs

        return mlf_forward_cuda(x, thresholds, decay)
    return mlf_forward_cpu(x, thresholds, decay)


@mlf_forward_op.register_fake
def _forward_fake(
    x: Tensor, thresholds: list[float], width: float, decay: float, detach_reset: bool
) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("mlfsnn::mlf_backward", mutates_args=())
def mlf_backward_op(
    x: Tensor, grad: Tensor, thresholds: list[float], width: float, decay: float, detach_reset: bool
) -> Tensor:
    """``dL/dx`` from the forward's input and ``dL/ds``; recomputes the potentials (nothing else saved)."""
    grad = grad.float().contiguous()
    if x.is_cuda:
        from .triton_mlf import mlf_backward_cuda

        return mlf_backward_cuda(x, grad, thresholds, width, decay, detach_reset)
    return mlf_backward_cpu(x, grad, thresholds, width, decay, detach_reset)


@mlf_backward_op.register_fake
def _backward_fake(
    x: Tensor, grad: Tensor, thresholds: list[float], width: float, decay: float, detach_reset: bool
) -> Tensor:
    return torch.empty_like(x)


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, thresholds, width, decay, detach_reset = inputs
    ctx.save_for_backward(x)  # the only saved activation: potentials are recomputed in backward
    ctx.args = (thresholds, width, decay, detach_reset)


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    (x,) = ctx.saved_tensors
    return mlf_backward_op(x, grad, *ctx.args), None, None, None, None


mlf_forward_op.register_autograd(_backward, setup_context=_setup_context)


# --- tdBN fused into the neuron's input read --------------------------------------------------------
#
#     mlfsnn::tdbn_mlf_forward(x, mean, var, gamma, beta, scale, eps, hw, batch_stats, thresholds, width,
#                              decay, detach_reset) -> spikes of MLF(tdBN(x))
#
# ``x`` is the convolution's output as ``[T, N]`` with columns (b, c, h, w); ``mean``/``var`` are the
# per-channel statistics tdBN normalises with (this batch's when ``batch_stats``, else the running
# ones); ``scale`` is tdBN's alpha * threshold. tdBN's output is never stored: forward and backward
# recompute it from ``x`` in the neuron kernel's read, so a layer saves one tensor, not four.
# Backward (docs/method.md §2), with z = scale * (x - mean) / den, den = sqrt(var) + eps, n values per
# channel and gy = dL/dy from the neuron:
#     dL/dbeta = sum(gy),   dL/dgamma = sum(gy * z)
#     dL/dx    = (scale * gamma / den) * (gy - [batch_stats] dL/dbeta / n)
#                - z * [batch_stats] gamma * dL/dgamma / (scale * n * sqrt(var))


def _bn_tuple(mean: Tensor, var: Tensor, gamma: Tensor, beta: Tensor, scale: float, eps: float, hw: int):
    den = torch.sqrt(var) + eps  # as tdBN computes it, so the normalised values are bit-identical
    parts = (mean, den, gamma, beta)
    return (*(t.detach().float().contiguous() for t in parts), scale, hw)


@torch.library.custom_op("mlfsnn::tdbn_mlf_forward", mutates_args=())
def tdbn_mlf_forward_op(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    gamma: Tensor,
    beta: Tensor,
    scale: float,
    eps: float,
    hw: int,
    batch_stats: bool,
    thresholds: list[float],
    width: float,
    decay: float,
    detach_reset: bool,
) -> Tensor:
    """Spike counts of MLF(tdBN(x)) (CPU kernel)."""
    return tdbn_mlf_forward_cpu(x, thresholds, decay, _bn_tuple(mean, var, gamma, beta, scale, eps, hw))


@tdbn_mlf_forward_op.register_fake
def _tdbn_forward_fake(x: Tensor, *args: Any) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("mlfsnn::tdbn_mlf_backward", mutates_args=())
def tdbn_mlf_backward_op(
    x: Tensor,
    grad: Tensor,
    mean: Tensor,
    var: Tensor,
    gamma: Tensor,
    beta: Tensor,
    scale: float,
    eps: float,
    hw: int,
    batch_stats: bool,
    thresholds: list[float],
    width: float,
    decay: float,
    detach_reset: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dx, dL/dgamma, dL/dbeta)`` of MLF(tdBN(x)); see the formulas above."""
    bn = _bn_tuple(mean, var, gamma, beta, scale, eps, hw)
    grad_y, sums = tdbn_mlf_backward_cpu(
        x, grad.float().contiguous(), thresholds, width, decay, detach_reset, bn
    )
    n = x.numel() / mean.numel()
    g64, den64 = gamma.detach().double(), bn[1].double()
    a = scale * g64 / den64
    if batch_stats:
        std = var.detach().double().sqrt()
        b = sums[0] / n
        d = torch.where(std > 0, g64 * sums[1] / (scale * n * std), torch.zeros_like(std))
    else:
        b = d = torch.zeros_like(a)
    as32 = [t.float().contiguous() for t in (a, b, d)]
    grad_x = tdbn_input_grad_cpu(x, grad_y, bn, *as32)
    return grad_x, sums[1].to(gamma.dtype), sums[0].to(beta.dtype)


@tdbn_mlf_backward_op.register_fake
def _tdbn_backward_fake(
    x: Tensor, grad: Tensor, mean: Tensor, var: Tensor, gamma: Tensor, beta: Tensor, *args: Any
):
    return torch.empty_like(x), torch.empty_like(gamma), torch.empty_like(beta)


def _tdbn_setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, mean, var, gamma, beta, *args = inputs
    ctx.save_for_backward(x, mean, var, gamma, beta)
    ctx.args = args


def _tdbn_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, mean, var, gamma, beta = ctx.saved_tensors
    grad_x, grad_gamma, grad_beta = tdbn_mlf_backward_op(x, grad, mean, var, gamma, beta, *ctx.args)
    # mean and var enter as constants: their dependence on x is inside dL/dx above.
    return grad_x, None, None, grad_gamma, grad_beta, *([None] * len(ctx.args))


tdbn_mlf_forward_op.register_autograd(_tdbn_backward, setup_context=_tdbn_setup_context)
