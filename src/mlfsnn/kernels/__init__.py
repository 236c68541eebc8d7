"""Fused MLF kernels: one autograd node for the whole sequence, all K levels at once.

* CPU: a C/OpenMP kernel compiled at first use (:mod:`mlfsnn.kernels.cpu`).
* CUDA: a Triton kernel (:mod:`mlfsnn.kernels.triton_mlf`).

Both are registered as ``torch.library`` custom ops (:mod:`mlfsnn.kernels.ops`), so
``torch.compile(model, fullgraph=True)`` traces through the neurons without a graph break.

Both save only the fp32 input for backward and recompute the potentials there, so a layer's saved
activations are one fp32 tensor whatever K is (the naive reference keeps several per level and step).
The backward is the BPTT derivation documented on ``mlfsnn.neurons._MLFFunction``.

:func:`fused_mlf` returns ``None`` where no fused kernel can run (no compiler, no Triton, another
device); the caller then falls back to the vectorised PyTorch path. The reason is warned once.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .cpu import KernelUnavailable, cpu_kernel_info, load_cpu_kernel
from .ops import mlf_backward_op, mlf_forward_op, tdbn_mlf_forward_op

__all__ = [
    "KernelUnavailable",
    "cpu_kernel_info",
    "fused_mlf",
    "fused_tdbn_mlf",
    "fused_tdbn_unavailable_reason",
    "fused_unavailable_reason",
    "mlf_backward_op",
    "mlf_forward_op",
]

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


@torch.compiler.assume_constant_result  # decided once per device type, outside any compiled graph
def _unavailable(device_type: str) -> str | None:
    return fused_unavailable_reason(torch.device(device_type))


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
    reason = _unavailable(x.device.type)
    if reason is not None:
        if warn:
            _warn_once(x.device, reason)
        return None
    if x.numel() == 0:
        return x * 0  # keeps the autograd link of an empty input
    shape, dtype = x.shape, x.dtype
    flat = x.reshape(shape[0], -1).to(torch.float32).contiguous()
    ths = [float(t) for t in thresholds]
    # The custom op saves its input for backward only when autograd needs it: inference keeps nothing.
    out = mlf_forward_op(flat, ths, float(width), float(decay), bool(detach_reset))
    return out.reshape(shape).to(dtype)


def fused_tdbn_unavailable_reason(x: Tensor) -> str | None:
    """``None`` when :func:`fused_tdbn_mlf` can run on ``x``, else why not (then: tdBN, then MLF)."""
    if x.device.type != "cpu":
        return f"tdBN is fused into the CPU kernel only, not on {x.device.type}"
    if x.dtype != torch.float32:
        return f"tdBN is fused for fp32 input only, got {x.dtype}"  # autocast rounds tdBN's output first
    if x.dim() < 3 or x.numel() == 0:
        return f"expected a non-empty [T, B, C, ...] input, got shape {tuple(x.shape)}"
    return _unavailable("cpu")


def fused_tdbn_mlf(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    gamma: Tensor,
    beta: Tensor,
    scale: float,
    eps: float,
    batch_stats: bool,
    thresholds: list[float],
    width: float,
    decay: float,
    detach_reset: bool,
) -> Tensor:
    """Spike counts of MLF(tdBN(x)) for ``x: [T, B, C, ...]`` (check :func:`fused_tdbn_unavailable_reason`).

    ``mean``/``var``: the ``[C]`` statistics tdBN normalises with (``batch_stats``: this batch's, so
    the backward also runs through them); ``scale``: tdBN's alpha * threshold.
    """
    flat = x.contiguous().reshape(x.shape[0], -1)
    hw = flat.shape[1] // (x.shape[1] * x.shape[2])
    ths = [float(t) for t in thresholds]
    out = tdbn_mlf_forward_op(
        flat,
        mean,
        var,
        gamma,
        beta,
        float(scale),
        float(eps),
        hw,
        bool(batch_stats),
        ths,
        float(width),
        float(decay),
        bool(detach_reset),
    )
    return out.reshape(x.shape)
