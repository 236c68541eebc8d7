"""Export a :class:`~mlfsnn.nn.resnet.SpikingResNet` to NIR and import NIR graphs back (docs/export.md).

The graph is the model's inference-time computation (running statistics, never batch statistics):

* every tdBN is folded into the convolution before it (computed in float64, stored as ``dtype``);
* ``bn0``, the input tdBN, becomes a 1x1 ``Conv2d`` with a diagonal weight: it cannot be folded into
  the stem convolution because that convolution zero-pads *after* normalising;
* an MLF neuron with K levels becomes K ``LIF`` nodes fed by the same edges, thresholds
  ``threshold + k * width``, hard reset to 0; their outputs all have edges into the next layer, and
  NIR sums the edges into a node, which is the count ``s[t]`` (docs/method.md §1);
* the DS block's "fire, then add" (docs/method.md §3) is the same sum of edges; the plain block's
  "add, then fire" is the sum of edges into its second neuron's levels;
* average pooling, ``Flatten`` and the classifier (``Affine``) end in the ``Output`` node, whose
  per-step values are averaged over T (the readout convention, stored in the graph's metadata).

Discrete time: NIR's LIF is ``tau dv/dt = (v_leak - v) + r I``. One forward-Euler step of ``dt``
gives ``v[t] = (1 - dt/tau) v[t-1] + (dt r / tau) I[t]``, so ``tau = dt / (1 - decay)`` and
``r = tau / dt`` (input coefficient 1) reproduce ``u[t] = decay * u[t-1] + x[t]``; ``v_leak = 0``,
``v_reset = 0``. ``decay = 1`` (no leak) becomes an ``IF`` node with ``r = 1 / dt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .neurons import MLF
from .nir_checks import check_dt
from .nir_import import DEFAULT_DT, META, NIRNetwork
from .resnet import SpikingBasicBlock, SpikingResNet
from .tdbn import TdBatchNorm

if TYPE_CHECKING:  # nir (and h5py under it) is imported only when a graph is built or read
    import nir as nir_t

__all__ = ["DEFAULT_DT", "META", "fold_conv_tdbn", "from_nir", "to_nir"]

READOUT = "mean over time steps of the Output node's per-step values"


def fold_conv_tdbn(conv: nn.Conv2d | None, bn: TdBatchNorm | None) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias (float64) of ``bn(conv(x))`` in eval mode as one convolution.

    ``bn`` computes ``alpha * th * (z - mean) / (sqrt(var) + eps) * gamma + beta`` (eps on the
    standard deviation, docs/method.md §2), so with ``s = alpha * th * gamma / (sqrt(var) + eps)``
    the folded layer is ``W' = s W`` and ``b' = s (b - mean) + beta``. Without ``conv`` (the input
    tdBN) the result is the diagonal 1x1 convolution that applies ``bn`` alone.
    """
    if conv is None:
        if bn is None:
            raise ValueError("fold_conv_tdbn needs a convolution or a tdBN")
        weight = torch.eye(bn.num_features, dtype=torch.float64).view(bn.num_features, -1, 1, 1)
        bias = torch.zeros(bn.num_features, dtype=torch.float64)
    else:
        weight = conv.weight.detach().cpu().double()
        bias = torch.zeros(weight.shape[0], dtype=torch.float64)
        if conv.bias is not None:
            bias = conv.bias.detach().cpu().double()
    if bn is not None:
        mean = bn.running_mean.detach().cpu().double()
        std = bn.running_var.detach().cpu().double().sqrt()
        scale = bn.alpha * bn.threshold / (std + bn.eps)
        shift = torch.zeros_like(scale)
        if bn.affine:
            scale = scale * bn.weight.detach().cpu().double()
            shift = bn.bias.detach().cpu().double()
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = (bias - mean) * scale + shift
    return weight.numpy(), bias.numpy()


def _pair(v: Any) -> tuple[int, int] | str:
    if isinstance(v, str):
        return v
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Builder:
    """Collects nodes and edges; every method returns the node names whose *sum* is its output."""

    def __init__(self, nir: Any, dtype: np.dtype, dt: float) -> None:
        self.nir, self.dtype, self.dt = nir, dtype, dt
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: Any, sources: Sequence[str]) -> list[str]:
        if name in self.nodes:
            raise ValueError(f"duplicate NIR node name {name!r}")
        self.nodes[name] = node
        # Edge order is the order the importer adds the inputs in, so rounding follows the model.
        self.edges += [(s, name) for s in sources]
        return [name]

    def conv(
        self, name: str, conv: nn.Conv2d | None, bn: TdBatchNorm | None, sources: list[str], shape: tuple
    ) -> tuple[list[str], tuple[int, ...]]:
        weight, bias = fold_conv_tdbn(conv, bn)
        node = self.nir.Conv2d(
            input_shape=tuple(shape[1:]),
            weight=weight.astype(self.dtype),
            stride=_pair(conv.stride if conv is not None else 1),
            padding=_pair(conv.padding if conv is not None else 0),
            dilation=_pair(conv.dilation if conv is not None else 1),
            groups=conv.groups if conv is not None else 1,
            bias=bias.astype(self.dtype),
        )
        return self.add(name, node, sources), tuple(int(v) for v in node.output_type["output"])

    def neuron(self, name: str, mlf: MLF, sources: list[str], shape: tuple) -> list[str]:
        """K LIF nodes ``name.level{k}`` on the same inputs; their outputs sum to the MLF count."""
        names = []

        def full(v: float) -> np.ndarray:  # NIR neuron parameters have the layer's full shape
            return np.full(shape, v, dtype=self.dtype)

        for k, th in enumerate(mlf.thresholds):
            meta = {
                META["group"]: name,
                META["level"]: k,
                META["levels"]: mlf.levels,
                META["threshold"]: mlf.threshold,
                META["width"]: mlf.width,
                META["decay"]: mlf.decay,
            }
            if mlf.decay < 1:
                tau = self.dt / (1.0 - mlf.decay)
                node = self.nir.LIF(
                    tau=full(tau),
                    r=full(tau / self.dt),
                    v_leak=full(0.0),
                    v_threshold=full(th),
                    v_reset=full(0.0),
                    metadata=meta,
                )
            else:  # no leak: tau would be infinite
                node = self.nir.IF(
                    r=full(1.0 / self.dt), v_threshold=full(th), v_reset=full(0.0), metadata=meta
                )
            names += self.add(f"{name}.level{k}", node, sources)
        return names

    def block(self, name: str, blk: SpikingBasicBlock, x: list[str], shape: tuple) -> tuple[list[str], tuple]:
        h, mid = self.conv(f"{name}.conv1", blk.conv1, blk.bn1, x, shape)
        h = self.neuron(f"{name}.sn1", blk.sn1, h, mid)
        h, out_shape = self.conv(f"{name}.conv2", blk.conv2, blk.bn2, h, mid)
        shortcut = x  # identity: the block's input, itself a sum of edges
        if blk.shortcut is not None:
            conv, bn, *neuron = blk.shortcut
            shortcut, _ = self.conv(f"{name}.shortcut.0", conv, bn, x, shape)
            if neuron:
                shortcut = self.neuron(f"{name}.shortcut.2", neuron[0], shortcut, out_shape)
        if blk.block == "ds":  # fire, then add: the spikes and the shortcut both go on
            return shortcut + self.neuron(f"{name}.sn2", blk.sn2, h, out_shape), out_shape
        # add, then fire: conv2 first, then the shortcut, the order the model adds them in
        return self.neuron(f"{name}.sn2", blk.sn2, h + shortcut, out_shape), out_shape


def to_nir(
    model: SpikingResNet, input_shape: Sequence[int], dt: float = DEFAULT_DT, dtype: Any = np.float32
) -> nir_t.NIRGraph:
    """The NIR graph of ``model``'s eval-mode computation for inputs of shape ``input_shape`` (C, H, W).

    The model is read, never changed (its training flag included); tdBN layers use their running
    statistics. ``dt`` is the step of the discrete-time mapping (stored as the graph's ``dt``
    metadata), ``dtype`` the dtype of every stored array (float64 keeps the fold exact to ~1e-16).
    """
    import nir

    if not isinstance(model, SpikingResNet):
        raise TypeError(f"to_nir exports a SpikingResNet, got {type(model).__name__}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    if shape[0] != model.conv1.in_channels:
        raise ValueError(f"input_shape has {shape[0]} channels, the model takes {model.conv1.in_channels}")
    if not (isinstance(dt, (int, float)) and 0 < dt < math.inf):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    b = _Builder(nir, np.dtype(dtype), float(dt))
    x = b.add("input", nir.Input(input_type=np.array(shape)), [])
    if model.bn0 is not None:
        x, _ = b.conv("bn0", None, model.bn0, x, shape)
    x, shape = b.conv("conv1", model.conv1, model.bn1, x, shape)
    x = b.neuron("sn1", model.sn1, x, shape)
    for stage in ("layer1", "layer2", "layer3"):
        for j, blk in enumerate(getattr(model, stage)):
            x, shape = b.block(f"{stage}.{j}", blk, x, shape)
    # AdaptiveAvgPool2d((1, 1)) is an average over the whole final feature map.
    window = np.array(shape[1:])
    x = b.add("avg_pool", nir.AvgPool2d(kernel_size=window, stride=window, padding=np.zeros(2, int)), x)
    x = b.add("flatten", nir.Flatten(input_type={"input": np.array([shape[0], 1, 1])}, start_dim=0), x)
    fc = model.fc
    bias = fc.bias.detach().cpu().double().numpy() if fc.bias is not None else np.zeros(fc.out_features)
    weight = fc.weight.detach().cpu().double().numpy()
    x = b.add("fc", nir.Affine(weight=weight.astype(b.dtype), bias=bias.astype(b.dtype)), x)
    b.add("output", nir.Output(output_type=np.array([fc.out_features])), x)
    meta = {"producer": "mlfsnn", "dt": float(dt), "readout": READOUT, "block": model.block}
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta)


def from_nir(graph: nir_t.NIRGraph, dt: float | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A module running ``graph`` on time-first input ``[T, B, C, H, W]``; returns ``[B, outputs]``.

    ``dt`` defaults to the graph's ``dt`` metadata, else :data:`DEFAULT_DT`; either must be a finite
    number > 0, and a graph the import cannot run is refused in one line (:class:`NIRGraphError`,
    a ``ValueError`` and a :class:`~mlfsnn.errors.ConfigError`). Neuron layers are
    :class:`~mlfsnn.MLF` modules at the names they had in the exported model (so
    :class:`~mlfsnn.NeuronMonitor` works unchanged); parameters are created in ``dtype``.
    See :class:`mlfsnn.nn.nir_import.NIRNetwork` for what a generic graph may contain.
    """
    if dt is not None:
        return NIRNetwork(graph, check_dt(dt), dtype)
    meta = getattr(graph, "metadata", None)
    stored = meta.get("dt", DEFAULT_DT) if isinstance(meta, dict) else DEFAULT_DT
    return NIRNetwork(graph, check_dt(stored, "the graph's dt metadata: dt"), dtype)
