"""Write traced layers (:mod:`mlfsnn.nn.nir_trace`) as NIR nodes and edges, in one of two forms.

``portable`` (the default) is written for the importers people use as shipped (docs/export.md):

* only ``Input``, ``Conv2d``, ``LIF`` / ``IF`` and ``Output`` nodes. A flatten followed by a linear
  layer is one ``Conv2d`` whose kernel covers the feature map (the same function: the flatten is
  C-ordered), and a global average pool before it is folded in (weight ``W / (H * W)``), because
  snnTorch's and nirtorch's ``Flatten`` maps swallow the batch axis and norse drops ``AvgPool2d``;
  any other average pool is a ``Conv2d`` with a diagonal weight ``1 / (kh * kw)``;
* a LIF level with ``r = 1`` and ``v_threshold = (1 - decay) * th_k``: NIR's equation then gives
  ``v = (1 - decay) * u``, the same spikes, in the form snnTorch (which divides the threshold by
  ``dt * r / tau``) and norse (which ignores ``r``) both read;
* the classes as ``[classes, 1, 1]``; the graph's ``readout_shape`` metadata says ``[classes]``.

``spec`` is the literal mapping: ``AvgPool2d``, ``Flatten``, ``Affine``, and LIF with input
coefficient ``dt * r / tau = 1`` (``r = tau / dt``) and ``v_threshold = th_k``. Both forms hold one
MLF neuron as K LIF nodes on the same edges (NIR sums the edges into a node), and from_nir reads
both exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .nir_trace import Layer, NIRExportError
from .tdbn import TdBatchNorm

__all__ = ["FORMS", "META", "build", "consumers", "fold_conv_tdbn", "lif_values"]

FORMS = ("portable", "spec")
# snnTorch's import_nir hard-codes this step when it turns tau into beta.
DEFAULT_SNNTORCH_DT = 1e-4
# Keys of the metadata on each LIF node that let from_nir rebuild one MLF module per neuron layer.
META = {
    "group": "mlfsnn_group",
    "level": "mlfsnn_level",
    "levels": "mlfsnn_levels",
    "threshold": "mlfsnn_threshold",
    "width": "mlfsnn_width",
    "decay": "mlfsnn_decay",
}


def fold_conv_tdbn(
    conv: nn.Conv2d | nn.Linear | None, bn: TdBatchNorm | None
) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias (float64) of ``bn(conv(x))`` in eval mode as one convolution (or linear map).

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
        weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        bias = (bias - mean) * scale + shift
    return weight.numpy(), bias.numpy()


def lif_values(form: str, decay: float, threshold: float, dt: float) -> dict[str, float]:
    """``tau``, ``r`` and ``v_threshold`` of one MLF level (threshold ``th_k``) in ``form``.

    Computed in float64 by exactly these expressions; from_nir recomputes them to recognise its own
    export, so a change here is a change there.
    """
    if decay >= 1:  # no leak: NIR's IF, dv/dt = r I, gain dt * r = 1 per step in both forms
        return {"r": 1.0 / dt, "v_threshold": threshold}
    tau = dt / (1.0 - decay)
    if form == "portable":
        return {"tau": tau, "r": 1.0, "v_threshold": (1.0 - decay) * threshold}
    return {"tau": tau, "r": tau / dt, "v_threshold": threshold}


class _Writer:
    """Turns layers into nodes; ``self.out[name]`` are the NIR nodes whose sum is a layer's output."""

    def __init__(self, nir: Any, layers: dict[str, Layer], form: str, dt: float, dtype: np.dtype) -> None:
        self.nir, self.layers, self.form, self.dt, self.dtype = nir, layers, form, dt, dtype
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.out: dict[str, list[str]] = {}
        self.shape: dict[str, tuple[int, ...]] = {}  # the shape each layer's output has in the graph
        self.users: dict[str, list[str]] = {n: [] for n in layers}
        for layer in layers.values():
            for s in layer.sources:
                self.users[s].append(layer.name)
        self.folded: dict[str, Layer] = {}  # conv / linear name -> the tdBN folded into it
        self.pooled: dict[str, Layer] = {}  # linear name -> the global average pool folded into it
        self.skipped: set[str] = set()  # that pool and the flatten after it: no nodes of their own

    def add(self, name: str, node: Any, sources: list[str]) -> None:
        if name in self.nodes:
            raise NIRExportError(f"to_nir: duplicate NIR node name {name!r}")
        self.nodes[name] = node
        # Edge order is the order the importer adds the inputs in, so rounding follows the model.
        self.edges += [(s, name) for s in self.expand(sources)]
        self.out[name] = [name]

    def expand(self, sources: list[str]) -> list[str]:
        return [node for s in sources for node in self.out[s]]

    def array(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.float64).astype(self.dtype)

    # --- one method per layer kind ----------------------------------------------------------------
    def run(self) -> None:
        self.plan_folds()
        for layer in self.layers.values():
            getattr(self, f"write_{layer.kind}")(layer)

    def plan_folds(self) -> None:
        for layer in self.layers.values():
            src = self.layers[layer.sources[0]] if len(layer.sources) == 1 else None
            if src is None:
                continue
            if (
                layer.kind == "tdbn"
                and src.kind in ("conv", "linear")
                and self.users[src.name] == [layer.name]
            ):
                self.folded[src.name] = layer
            if self.form != "portable" or layer.kind != "linear" or src.kind != "flatten":
                continue
            pool = self.layers[src.sources[0]] if len(src.sources) == 1 else src
            if self.users[src.name] != [layer.name] or self.users[pool.name] != [src.name]:
                continue
            if pool.kind == "avgpool" and pool.shape[1:] == (1, 1) and not any(pool.params["padding"]):
                whole = tuple(pool.params["kernel"]) == self.layers[pool.sources[0]].shape[1:]
                if whole:  # a global average pool: its 1 / (H * W) goes into the linear layer's weight
                    self.pooled[layer.name] = pool
                    self.skipped |= {pool.name, src.name}

    def write_input(self, layer: Layer) -> None:
        self.add(layer.name, self.nir.Input(input_type=np.array(layer.shape)), [])
        self.shape[layer.name] = layer.shape

    def write_output(self, layer: Layer) -> None:
        shape = self.shape[layer.sources[0]]
        self.add(layer.name, self.nir.Output(output_type=np.array(shape)), layer.sources)

    def conv_node(
        self, layer: Layer, weight: np.ndarray, bias: np.ndarray, sources: list[str], **kw: Any
    ) -> None:
        in_shape = self.shape[sources[0]]
        node = self.nir.Conv2d(
            input_shape=tuple(in_shape[1:]),
            weight=self.array(weight),
            stride=kw.get("stride", (1, 1)),
            padding=kw.get("padding", (0, 0)),
            dilation=kw.get("dilation", (1, 1)),
            groups=1,
            bias=self.array(bias),
        )
        self.add(layer.name, node, sources)
        self.shape[layer.name] = tuple(int(v) for v in node.output_type["output"])

    def write_conv(self, layer: Layer) -> None:
        conv = layer.module
        weight, bias = fold_conv_tdbn(
            conv, self.folded[layer.name].module if layer.name in self.folded else None
        )
        pair = lambda v: (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        kw = {"stride": pair(conv.stride), "padding": pair(conv.padding), "dilation": pair(conv.dilation)}
        self.conv_node(layer, weight, bias, layer.sources, **kw)

    def write_linear(self, layer: Layer) -> None:
        logical = self.layers[layer.sources[0]].shape
        if len(logical) != 1:
            raise NIRExportError(
                f"to_nir cannot export Linear {layer.name!r} on a {logical} value: flatten it to 1-D first"
            )
        weight, bias = fold_conv_tdbn(
            layer.module, self.folded[layer.name].module if layer.name in self.folded else None
        )
        if layer.name in self.pooled:  # global pool, flatten, linear: one convolution over the map
            pool = self.pooled[layer.name]
            c, h, w = self.shape[pool.sources[0]]
            weight = np.broadcast_to(weight[:, :, None, None] / (h * w), (weight.shape[0], c, h, w))
            return self.conv_node(layer, weight, bias, pool.sources)
        in_shape = self.shape[layer.sources[0]]
        if len(in_shape) == 3:  # portable, after a flatten: a convolution whose kernel is the whole map
            return self.conv_node(layer, weight.reshape(weight.shape[0], *in_shape), bias, layer.sources)
        node = self.nir.Affine(weight=self.array(weight), bias=self.array(bias))
        self.add(layer.name, node, layer.sources)
        self.shape[layer.name] = (weight.shape[0],)

    def write_tdbn(self, layer: Layer) -> None:
        src = layer.sources[0]
        if src in self.folded and self.folded[src] is layer:
            self.out[layer.name], self.shape[layer.name] = self.out[src], self.shape[src]
            return
        weight, bias = fold_conv_tdbn(None, layer.module)  # a diagonal 1x1 convolution
        shape = self.shape[src]
        if len(shape) == 3 and shape[0] == layer.shape[0]:
            return self.conv_node(layer, weight, bias, layer.sources)
        if len(shape) == 1:
            node = self.nir.Affine(weight=self.array(weight[:, :, 0, 0]), bias=self.array(bias))
            self.add(layer.name, node, layer.sources)
            self.shape[layer.name] = shape
            return
        raise NIRExportError(
            f"to_nir cannot export TdBatchNorm {layer.name!r} after a flatten in the portable form: "
            "use form='spec' (snn-export target=spec)"
        )

    def write_avgpool(self, layer: Layer) -> None:
        if layer.name in self.skipped:
            return  # written as part of the linear layer after it
        p = layer.params
        if self.form == "spec":
            kernel, stride, padding = (np.array(p[k]) for k in ("kernel", "stride", "padding"))
            self.add(
                layer.name,
                self.nir.AvgPool2d(kernel_size=kernel, stride=stride, padding=padding),
                layer.sources,
            )
            self.shape[layer.name] = layer.shape
            return
        c, (kh, kw) = self.shape[layer.sources[0]][0], p["kernel"]
        weight = np.eye(c)[:, :, None, None] * np.full((kh, kw), 1.0 / (kh * kw))
        kw_ = {"stride": tuple(p["stride"]), "padding": tuple(p["padding"])}
        self.conv_node(layer, weight, np.zeros(c), layer.sources, **kw_)

    def write_flatten(self, layer: Layer) -> None:
        if layer.name in self.skipped:
            return
        if self.form == "portable":  # the flatten is in the weights of the layer after it
            self.out[layer.name] = self.expand(layer.sources)
            self.shape[layer.name] = self.shape[layer.sources[0]]
            return
        p = layer.params
        node = self.nir.Flatten(
            input_type={"input": np.array(p["input"])}, start_dim=p["start"], end_dim=p["end"]
        )
        self.add(layer.name, node, layer.sources)
        self.shape[layer.name] = layer.shape

    def write_neuron(self, layer: Layer) -> None:
        """K LIF (IF without leak) nodes ``name.level{k}`` on the same inputs; their sum is the count."""
        mlf, shape = layer.module, self.shape[layer.sources[0]]
        names = []
        for k, th in enumerate(mlf.thresholds):
            meta = {
                META["group"]: layer.name,
                META["level"]: k,
                META["levels"]: mlf.levels,
                META["threshold"]: mlf.threshold,
                META["width"]: mlf.width,
                META["decay"]: mlf.decay,
            }
            values = {
                f: np.full(shape, v, dtype=self.dtype)
                for f, v in lif_values(self.form, mlf.decay, th, self.dt).items()
            }
            zeros = np.zeros(shape, dtype=self.dtype)
            if "tau" in values:
                node = self.nir.LIF(v_leak=zeros, v_reset=zeros, metadata=meta, **values)
            else:
                node = self.nir.IF(v_reset=zeros, metadata=meta, **values)
            self.add(f"{layer.name}.level{k}", node, layer.sources)
            names.append(f"{layer.name}.level{k}")
        self.out[layer.name], self.shape[layer.name] = names, shape


def build(nir: Any, layers: dict[str, Layer], form: str, dt: float, dtype: np.dtype) -> tuple[dict, list]:
    """The nodes and edges of ``layers`` written in ``form`` (see the module docstring)."""
    if form not in FORMS:
        raise NIRExportError(f"form={form!r} is invalid: expected one of {', '.join(FORMS)}")
    w = _Writer(nir, layers, form, dt, dtype)
    w.run()
    return w.nodes, w.edges


def consumers(graph: Any) -> dict[str, str]:
    """What each shipped importer makes of ``graph``: ``"exact: <how>"`` or why it cannot be.

    The verdicts are those measured for docs/export.md's compatibility matrix (snntorch 1.0.0,
    norse 1.1.0, nirtorch 2.6); they read only the node types, the edges and the ``dt`` metadata.
    """
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    dt = meta.get("dt")
    sources: dict[str, int] = {}
    for _, dst in graph.edges:
        sources[dst] = sources.get(dst, 0) + 1
    fan_in = [n for n, k in sources.items() if k > 1]
    scaled_r = any(type(n).__name__ == "LIF" and not np.allclose(n.r, 1.0) for n in graph.nodes.values())
    flatten = "its Flatten map (torch.nn.Flatten(start_dim=0)) swallows the batch axis at batch > 1"
    out = {}
    if "Flatten" in kinds:
        out["snntorch"] = flatten
    elif "IF" in kinds:
        out["snntorch"] = "its IF map asserts r == 1, then builds a leaky (beta 0.9) subtract-reset neuron"
    elif dt != DEFAULT_SNNTORCH_DT:
        out["snntorch"] = f"it assumes dt = 1e-4 (the graph's dt is {dt})"
    else:
        out["snntorch"] = "exact: import_from_nir(graph), net(x[t]) per step, snntorch.utils.reset(net) first"
    if "AvgPool2d" in kinds:
        out["norse"] = "norse.torch.from_nir drops AvgPool2d nodes"
    elif scaled_r:
        out["norse"] = "norse.torch.from_nir ignores r (input gain dt/tau instead of dt*r/tau)"
    elif "Flatten" in kinds:
        out["norse"] = flatten
    elif fan_in:
        out["norse"] = (
            f"norse.torch.from_nir runs nodes depth-first and computes the {len(fan_in)} nodes with several "
            f"inputs wrongly ({fan_in[0]!r}, ...); norse's cells under nirtorch.nir_to_torch are exact"
        )
    else:
        out["norse"] = f"exact: norse.torch.from_nir(graph, dt={dt})"
    if "Affine" in kinds:
        out["nirtorch"] = "nir_to_torch's default Affine map leaves the bias random (nirtorch 2.6)"
    elif "Flatten" in kinds:
        out["nirtorch"] = flatten
    else:
        out["nirtorch"] = "exact: nir_to_torch(graph, {nir.LIF: ..., nir.IF: ...}) (docs/export.md)"
    return out
