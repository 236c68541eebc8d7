"""The stateless NIR nodes as PyTorch modules (used by :mod:`mlfsnn.nn.nir_import`).

Each runs on time folded into batch, so NIR's shapes (which count no batch axis) shift by one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nir_checks import NIRGraphError

__all__ = ["STATELESS", "Elementwise", "stateless"]

# The node types these modules stand for, by class name.
STATELESS = ("Conv2d", "Affine", "Linear", "Scale", "Flatten", "AvgPool2d", "SumPool2d", "Threshold")


class _Flatten(nn.Module):
    """NIR's Flatten: dimensions count without the batch (here: folded time and batch) axis."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim = start_dim + 1 if start_dim >= 0 else start_dim
        self.end_dim = end_dim + 1 if end_dim >= 0 else end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)


class Elementwise(nn.Module):
    """NIR's Scale (``x * scale``), Threshold (``x > threshold``) and a neuron's input gain."""

    def __init__(self, kind: str, value: Tensor) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("value", value)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "threshold":
            return (x > self.value).to(x.dtype)
        return x * self.value


class _SumPool2d(nn.Module):
    def __init__(self, kernel: tuple, stride: tuple, padding: tuple) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, divisor_override=1)


def _ints(v: Any) -> tuple[int, ...] | str:
    if isinstance(v, (str, bytes)):
        return v.decode() if isinstance(v, bytes) else v
    return tuple(int(i) for i in np.atleast_1d(v))


def _tensor(a: Any, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype)


def stateless(name: str, kind: str, node: Any, dtype: torch.dtype) -> nn.Module:
    """The module of a stateless node; malformed parameters are one :class:`NIRGraphError`."""
    try:
        return _stateless_module(kind, node, dtype)
    except (AttributeError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise NIRGraphError(f"NIR node {name!r} ({kind}) has invalid parameters: {reason}") from None


def _stateless_module(kind: str, node: Any, dtype: torch.dtype) -> nn.Module:
    if kind == "Conv2d":
        weight = np.asarray(node.weight)
        groups = int(node.groups)
        if weight.ndim != 4 or groups < 1:
            raise ValueError(f"a {weight.ndim}-D weight in {groups} groups (expected 4-D, groups >= 1)")
        conv = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            weight.shape[2:],
            _ints(node.stride),
            _ints(node.padding),
            _ints(node.dilation),
            groups,
            bias=True,
        )
        conv.weight.data, conv.bias.data = _tensor(weight, dtype), _tensor(node.bias, dtype)
        return conv
    if kind in ("Affine", "Linear"):
        weight = np.asarray(node.weight)
        if weight.ndim != 2:
            raise ValueError(f"a {weight.ndim}-D weight is not supported (2-D only)")
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=kind == "Affine")
        layer.weight.data = _tensor(weight, dtype)
        if kind == "Affine":
            layer.bias.data = _tensor(node.bias, dtype)
        return layer
    if kind == "Flatten":
        return _Flatten(int(node.start_dim), int(node.end_dim))
    if kind in ("AvgPool2d", "SumPool2d"):
        kernel, stride, padding = (_ints(v) for v in (node.kernel_size, node.stride, node.padding))
        if kind == "SumPool2d":
            return _SumPool2d(kernel, stride, padding)
        return nn.AvgPool2d(kernel, stride, padding)
    if kind == "Scale":
        return Elementwise("scale", _tensor(node.scale, dtype))
    return Elementwise("threshold", _tensor(node.threshold, dtype))
