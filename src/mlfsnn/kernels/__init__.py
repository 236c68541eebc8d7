"""Fused MLF kernels: one autograd node for the whole sequence, all K levels at once.

* CPU: a C/OpenMP kernel compiled at first use (:mod:`mlfsnn.kernels.cpu`).
* CUDA: a Triton kernel (:mod:`mlfsnn.kernels.triton_mlf`).

Both save only the fp32 input for backward and recompute the potentials there, so a layer's saved
activations are one fp32 tensor whatever K is (the naive reference keeps several per level and step).
The backward is the BPTT derivation documented on ``mlfsnn.neurons._MLFFunction``.

:func:`fused_mlf` returns ``None`` where no fused kernel can run (no compiler, no Triton, another
device); the caller then falls back to the vectorised PyTorch path. The reason is warned once.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cpu import KernelUnavailable, cpu_kernel_info, load_cpu_kernel, mlf_backward_cpu, mlf_forward_cpu

__all__ = ["KernelUnavailable", "cpu_kernel_info", "fused_mlf", "fused_unavailable_reason"]

_WARNED: set[str] = set()


def fused_unavailable_reason(device: torch.device) -> str | None:
    """``None`` when a fused kernel can run on ``device``, else why not."""
    if device.type == "cpu":
        try:
            load_cpu_kernel()
        except KernelUnavailable as err:
            return str(err)
        return None
    if device.type == "cuda":
        from . import triton_mlf  # imported lazily: triton is heavy and absent on many CPU installs

        return triton_mlf.unavailable_reason()
    return f"no fused MLF kernel for device type {device.type!r}"


def _warn_once(device: torch.device, reason: str) -> None:
    if device.type in _WARNED:
        return
    _WARNED.add(device.type)
    warnings.warn(
        f"mlfsnn: fused MLF kernel unavailable on {device.type} ({reason}); "
        "falling back to the slower vectorised PyTorch implementation.",
        RuntimeWarning,
        stacklevel=3,
    )


def _forward(x: Tensor, ths: list[float], decay: float) -> Tensor:
    if x.is_cuda:
        from .triton_mlf import mlf_forward_cuda

        return mlf_forward_cuda(x, ths, decay)
    return mlf_forward_cpu(x, ths, decay)


class _FusedMLF(torch.autograd.Function):
    """``[T, N]`` fp32 contiguous input -> spike counts; backward recomputes the potentials."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, ths: list[float], width: float, decay: float, detach_reset: bool
    ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.ths, ctx.width, ctx.decay, ctx.detach_reset = ths, width, decay, detach_reset
        return _forward(x, ths, decay)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        grad = grad.float().contiguous()
        args = (ctx.ths, ctx.width, ctx.decay, ctx.detach_reset)
        if x.is_cuda:
            from .triton_mlf import mlf_backward_cuda

            grad_x = mlf_backward_cuda(x, grad, *args)
        else:
            grad_x = mlf_backward_cpu(x, grad, *args)
        return grad_x, None, None, None, None


@torch.compiler.disable  # an opaque kernel for torch.compile: one clean graph break, no tracing of the loader
def fused_mlf(
    x: Tensor,
    thresholds: list[float],
    width: float,
    decay: float,
    detach_reset: bool,
    warn: bool = True,
) -> Tensor | None:
    """Fused MLF over ``x: [T, ...]``; ``None`` (after a one-time warning) when no kernel can run.

    Potentials are fp32 whatever ``x.dtype``; the counts come back in ``x.dtype``.
    """
    reason = fused_unavailable_reason(x.device)
    if reason is not None:
        if warn:
            _warn_once(x.device, reason)
        return None
    if x.numel() == 0:
        return x * 0  # keeps the autograd link of an empty input
    shape, dtype = x.shape, x.dtype
    flat = x.reshape(shape[0], -1).to(torch.float32).contiguous()
    ths = [float(t) for t in thresholds]
    if torch.is_grad_enabled() and x.requires_grad:
        out = _FusedMLF.apply(flat, ths, float(width), float(decay), bool(detach_reset))
    else:
        out = _forward(flat.detach(), ths, float(decay))  # nothing saved: inference keeps no activations
    return out.reshape(shape).to(dtype)
