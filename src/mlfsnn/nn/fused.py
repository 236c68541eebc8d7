"""tdBN followed by an MLF neuron as one pass over the activation (docs/method.md §2, §1).

The unfused pair reads the convolution's output, writes tdBN's output through five element-wise ops
(each a full pass, each kept for backward), and the neuron reads it again. The fused kernel
normalises each value as it reads it, so tdBN's output is never stored: forward saves one tensor
instead of five, and backward is two passes instead of about fifteen. The normalisation runs in
exactly tdBN's order of float operations, so spikes are bit-identical to ``neuron(bn(x))``.

It falls back to ``neuron(bn(x))`` wherever the kernel cannot keep that promise or would bypass
something: input not fp32 (autocast rounds tdBN's output before the neuron), a device without the
kernel, data-parallel synchronised statistics, hooks on either module (observers must see both
calls), a neuron that is not an :class:`~mlfsnn.MLF` (benchmark twins), or fusion switched off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from .. import kernels
from .neurons import MLF
from .tdbn import TdBatchNorm

__all__ = ["fusion", "fusion_enabled", "tdbn_fire"]

_ENABLED = [True]


def fusion_enabled() -> bool:
    return _ENABLED[0]


@contextlib.contextmanager
def fusion(enabled: bool) -> Iterator[None]:
    """Switch tdBN + MLF fusion on or off inside the block (benchmarks, tests)."""
    before, _ENABLED[0] = _ENABLED[0], enabled
    try:
        yield
    finally:
        _ENABLED[0] = before


def _has_hooks(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _fusable(bn: nn.Module, neuron: nn.Module, x: Tensor) -> bool:
    return (
        _ENABLED[0]
        and type(neuron) is MLF
        and isinstance(bn, TdBatchNorm)
        and bn.affine
        and bn.moment_reducer is None
        and not _has_hooks(bn, neuron)
        and kernels.fused_tdbn_unavailable_reason(x) is None
    )


def tdbn_fire(bn: nn.Module, neuron: nn.Module, x: Tensor) -> Tensor:
    """``neuron(bn(x))`` for ``x: [T, B, C, ...]``; one fused pass where it can run (see above)."""
    if not _fusable(bn, neuron, x):
        return neuron(bn(x))
    bn._check_input_dim(x)
    mean, var = bn.statistics(x.flatten(0, 1))  # updates the running statistics in training
    return kernels.fused_tdbn_mlf(
        x,
        mean.flatten(),
        var.flatten(),
        bn.weight,
        bn.bias,
        bn.alpha * bn.threshold,
        bn.eps,
        bn.training,
        neuron.thresholds,
        neuron.width,
        neuron.decay,
        neuron.detach_reset,
    )
