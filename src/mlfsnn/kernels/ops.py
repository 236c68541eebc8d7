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

from .cpu import mlf_backward_cpu, mlf_forward_cpu

__all__ = ["mlf_backward_op", "mlf_forward_op"]


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
