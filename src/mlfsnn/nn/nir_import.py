"""Run a NIR graph as a time-first PyTorch module (the import half of :mod:`mlfsnn.nn.nir`).

A node's input is the sum of its incoming edges, added in the order the edges are listed (so the
rounding follows the exporting model). Stateless nodes run once on time folded into batch; neuron
nodes scan over time with the MLF arithmetic ``(decay * u) * (1 - o) + x`` (docs/method.md §1), so
the spikes are those of :class:`~mlfsnn.MLF`.

LIF / IF nodes with the same inputs, outputs and dynamics whose thresholds step by a constant width
become one :class:`~mlfsnn.MLF` with K levels (exactly what the exporter's metadata describes);
other neuron nodes become one single-level MLF each, which sums to the same values.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .neurons import MLF
from .nir_checks import NIRGraphError, check_dt, check_edges, check_names, uniform
from .nir_forms import META, lif_values
from .nir_layers import STATELESS, Elementwise, stateless

__all__ = ["CONVENTIONS", "DEFAULT_DT", "META", "NIRGraphError", "NIRNetwork"]

# The step the forward-Euler mapping assumes (snnTorch's NIR exporter and importer hard-code the
# same); any positive dt gives the same dynamics, it only rescales tau and r.
DEFAULT_DT = 1e-4
# How a producer meant the neuron parameters (see _neuron): NIR's equations, or norse 1.1's export.
CONVENTIONS = ("nir", "norse")
# Reset mechanisms a node's metadata may declare that MLF's hard reset to 0 is not.
SOFT_RESETS = ("subtract", "subtraction", "membrane_subtract", "soft", "reset_subtract")
# Node types from_nir runs, by class name (stateless first, then the two spiking neurons).
SUPPORTED = ("Input", "Output", *STATELESS, "LIF", "IF")


@dataclass
class _Neuron:
    """One LIF / IF node: the MLF dynamics it has, and what its metadata claims."""

    name: str
    decay: float
    gain: float
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)


def _metadata(node: Any) -> dict[str, Any]:
    metadata = node.metadata if isinstance(getattr(node, "metadata", None), dict) else {}
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in metadata.items()}


def _check_reset(name: str, meta: dict[str, Any]) -> None:
    """Refuse a node whose metadata declares a reset other than to ``v_reset`` (NIR's, and MLF's)."""
    for key in ("reset", "reset_mechanism", "reset_method"):
        value = meta.get(key)
        if isinstance(value, str) and value.strip().lower() in SOFT_RESETS:
            raise NIRGraphError(
                f"NIR node {name!r}: {key}={value!r} is not supported: MLF neurons reset to v_reset = 0 "
                "(a reset by subtraction keeps the overshoot, which a hard reset does not)"
            )


def _neuron(name: str, node: Any, dt: float, convention: str = "nir") -> _Neuron:
    """The MLF dynamics of one LIF / IF node under ``convention``.

    ``nir``: forward Euler on NIR's equations, ``decay = 1 - dt/tau``, input gain ``dt r / tau``
    (LIF) or ``dt r`` (IF). ``norse``: norse 1.1's ``to_nir`` writes ``tau = dt / tau_mem_inv`` and
    runs ``v += dt tau_mem_inv (I - v)`` (so ``decay = 1 - dt^2 / tau``, gain ``r dt^2 / tau``), and
    its IF adds the input once per step (gain ``r``).
    """
    kind = type(node).__name__
    meta = _metadata(node)
    _check_reset(name, meta)
    values = {f: uniform(name, f, getattr(node, f, None)) for f in ("r", "v_threshold")}
    resets = (("v_reset", getattr(node, "v_reset", None)), ("v_leak", getattr(node, "v_leak", 0.0)))
    for f, v in resets:
        if v is not None and uniform(name, f, v) != 0.0:
            raise NIRGraphError(f"NIR node {name!r}: {f} != 0 is not supported (MLF resets and leaks to 0)")
    step = dt * dt if convention == "norse" else dt  # what multiplies 1/tau in one step
    if kind == "LIF":
        tau = uniform(name, "tau", getattr(node, "tau", None), positive=True)
        decay, gain = 1.0 - step / tau, step * values["r"] / tau
    else:
        decay, gain = 1.0, values["r"] * (1.0 if convention == "norse" else dt)
    if not 0.0 <= decay <= 1.0:
        hint = (
            "" if convention == "norse" or values["r"] != 1.0 else "; a norse export? pass convention='norse'"
        )
        raise NIRGraphError(
            f"NIR node {name!r}: decay 1 - dt/tau = {decay:.6g} is outside [0, 1]: expected tau >= dt "
            f"(tau={tau:.6g}, dt={dt:.6g}, convention={convention!r}){hint}"
        )
    out = _Neuron(name, decay, gain, values["v_threshold"], meta)
    if convention == "nir":
        _trust_metadata(out, node, dt)
    else:
        out.meta = {}
    return out


def _trust_metadata(n: _Neuron, node: Any, dt: float) -> None:
    """Take the exact decay, gain 1 and threshold from the exporter's metadata when the arrays agree.

    The arrays hold :func:`~mlfsnn.nn.nir_forms.lif_values` (either form) rounded to their dtype;
    recomputing them from the metadata and comparing in that dtype is an exact test.
    """
    try:
        decay, th = float(n.meta[META["decay"]]), float(n.meta[META["threshold"]])
        level, width = int(n.meta[META["level"]]), float(n.meta[META["width"]])
        n.meta[META["levels"]], n.meta[META["group"]] = (
            int(n.meta[META["levels"]]),
            str(n.meta[META["group"]]),
        )
    except (KeyError, TypeError, ValueError):
        n.meta = {}
        return
    dtype = np.asarray(node.v_threshold).dtype

    def same(a: Any, v: float) -> bool:  # a stored (uniform) array against v rounded to its dtype
        return bool(np.asarray(a).flat[0] == np.asarray(v).astype(dtype))

    th_k = th + level * width
    is_lif = type(node).__name__ == "LIF"
    ok = 0.0 <= decay <= 1.0 and (decay < 1) == is_lif
    if ok:
        ok = any(
            all(same(getattr(node, f), v) for f, v in lif_values(form, decay, th_k, dt).items())
            for form in ("portable", "spec")
        )
    if ok:
        n.decay, n.gain, n.threshold = decay, 1.0, th_k
    else:
        n.meta = {}


def _groups(neurons: list[_Neuron], inputs: dict, outputs: dict) -> list[tuple[str, MLF, float, list[str]]]:
    """``(module name, MLF, input gain, member nodes)``: K-level MLFs where possible, else 1-level."""
    buckets: dict[tuple, list[_Neuron]] = {}
    for n in neurons:
        key = (
            tuple(inputs[n.name]),
            tuple(sorted(outputs[n.name])),
            n.decay,
            n.gain,
            n.meta.get(META["group"]),
        )
        buckets.setdefault(key, []).append(n)
    out = []
    for (_, _, decay, gain, group), members in buckets.items():
        members.sort(key=lambda n: n.threshold)
        ths = [n.threshold for n in members]
        if group is not None:
            levels = int(members[0].meta[META["levels"]])
            first, width = float(members[0].meta[META["threshold"]]), float(members[0].meta[META["width"]])
        else:
            levels, first = len(members), ths[0]
            width = ths[1] - ths[0] if levels > 1 else 1.0  # one level: width only shapes the surrogate
        # levels (from metadata) is compared first: a claimed 10**12 levels must not build a ladder
        if levels == len(members) and width > 0 and ths == [first + k * width for k in range(levels)]:
            names = [n.name for n in members]
            match = [re.fullmatch(r"(.+)\.level\d+", s) for s in names]
            name = group or (match[0].group(1) if levels > 1 and all(match) else names[0])
            mlf = MLF(levels=levels, threshold=first, width=width, decay=decay)
            out.append((str(name), mlf, gain, names))
        else:
            out += [(n.name, MLF(1, n.threshold, 1.0, decay), gain, [n.name]) for n in members]
    return out


@dataclass
class _Unit:
    """One step of the forward pass: a module (or the input/output) and the units it sums."""

    name: str
    kind: str  # "input" | "output" | "stateless" | "neuron"
    sources: list[str]
    module: nn.Module | None = None
    gain: nn.Module | None = None


class NIRNetwork(nn.Module):
    """A NIR graph as a module over time-first input ``[T, B, ...]`` (see the module docstring).

    Node types: Input and Output (one each), Conv2d, Affine, Linear (2-D weights), Scale, Flatten,
    AvgPool2d, SumPool2d, Threshold, LIF and IF with uniform parameters, ``v_leak = v_reset = 0``
    and ``dt <= tau``. ``forward`` returns the Output's per-step values averaged over T;
    :meth:`steps` returns them per step, both shaped as the graph's ``readout_shape`` metadata says
    where it has one (mlfsnn's portable form writes ``[classes, 1, 1]`` and says ``[classes]``).
    """

    def __init__(
        self, graph: Any, dt: float, dtype: torch.dtype = torch.float32, convention: str = "nir"
    ) -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise NIRGraphError(
                f"convention={convention!r} is invalid: expected one of {', '.join(CONVENTIONS)}"
            )
        self.dt = dt = check_dt(dt)
        self.convention = convention
        try:
            nodes: dict[str, Any] = dict(graph.nodes)
        except (AttributeError, TypeError, ValueError):
            raise NIRGraphError("the NIR graph's nodes are not a mapping of names to nodes") from None
        check_names(nodes)
        for name, node in nodes.items():
            if type(node).__name__ not in SUPPORTED:
                raise NIRGraphError(
                    f"NIR node {name!r} of type {type(node).__name__} is not supported; "
                    f"supported: {', '.join(SUPPORTED)}"
                )
        inputs: dict[str, list[str]] = {n: [] for n in nodes}
        outputs: dict[str, list[str]] = {n: [] for n in nodes}
        for src, dst in check_edges(getattr(graph, "edges", None), nodes):
            inputs[dst].append(src)
            outputs[src].append(dst)
        ends = {k: [n for n, v in nodes.items() if type(v).__name__ == k] for k in ("Input", "Output")}
        if len(ends["Input"]) != 1 or len(ends["Output"]) != 1:
            raise NIRGraphError(f"the NIR graph needs one Input and one Output node, got {ends}")
        self.input_shape = _input_shape(ends["Input"][0], nodes[ends["Input"][0]])
        if convention == "norse" and len(self.input_shape) in (2, 4):
            # norse's to_nir records its sample's shape, batch axis included ([B, F] or [B, C, H, W])
            self.input_shape = self.input_shape[1:]
        self.readout_shape = _readout_shape(graph, nodes[ends["Output"][0]])
        units, owner = self._build_units(nodes, inputs, outputs, dt, dtype)
        orphans = [u.name for u in units.values() if u.kind != "input" and not u.sources]
        if orphans:
            raise NIRGraphError(f"NIR nodes without incoming edges: {orphans[:5]}")
        for u in units.values():
            u.sources = list(dict.fromkeys(owner[s] for s in u.sources))  # a K-level MLF counts once
        self._plan = _order(units)
        self._output = ends["Output"][0]

    def _build_units(self, nodes: dict, inputs: dict, outputs: dict, dt: float, dtype: torch.dtype) -> tuple:
        units: dict[str, _Unit] = {}
        owner: dict[str, str] = {}
        neurons = []
        for name, node in nodes.items():
            kind = type(node).__name__
            if kind in ("LIF", "IF"):
                neurons.append(_neuron(name, node, dt, self.convention))
                continue
            role = {"Input": "input", "Output": "output"}.get(kind, "stateless")
            module = stateless(name, kind, node, dtype) if role == "stateless" else None
            units[name] = _Unit(name, role, inputs[name], module)
            owner[name] = name
            if module is not None:
                self._install(name, module)
        for name, mlf, gain, members in _groups(neurons, inputs, outputs):
            scale = None if gain == 1.0 else Elementwise("scale", torch.tensor(gain, dtype=dtype))
            name = self._install(name, mlf, taken=units)
            if scale is not None:
                self._install(f"{name}_gain", scale)
            units[name] = _Unit(name, "neuron", inputs[members[0]], mlf, scale)
            owner.update(dict.fromkeys(members, name))
        return units, owner

    def _install(self, path: str, module: nn.Module, taken: Sequence[str] = ()) -> str:
        """Place ``module`` at the dotted ``path`` (its name in the exported model), else a flat name."""
        if path not in taken:
            parent, parts = self, path.split(".")
            try:
                for part in parts[:-1]:
                    if part not in parent._modules:
                        parent.add_module(part, nn.Module())
                    parent = parent._modules[part]
                if parts[-1] not in parent._modules:
                    parent.add_module(parts[-1], module)
                    return path
            except (KeyError, TypeError):  # a name torch refuses: an attribute, an empty part
                pass
        flat = re.sub(r"\W", "_", path)
        while hasattr(self, flat) or flat in taken:
            flat += "_"
        self.add_module(flat, module)
        return flat

    def steps(self, x: Tensor) -> Tensor:
        """The Output node's values at every step, ``[T, B, ...]``."""
        if x.dim() != 2 + len(self.input_shape) or tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(
                f"expected input [T, B, {', '.join(map(str, self.input_shape))}], got shape {tuple(x.shape)}"
            )
        values: dict[str, Tensor] = {}
        last_use = {s: i for i, u in enumerate(self._plan) for s in u.sources}
        for i, unit in enumerate(self._plan):
            if unit.kind == "input":
                values[unit.name] = x
                continue
            h = values[unit.sources[0]]
            for s in unit.sources[1:]:
                h = h + values[s]
            if unit.kind == "stateless":
                h = unit.module(h.flatten(0, 1)).unflatten(0, h.shape[:2])
            elif unit.kind == "neuron":
                h = unit.module(h if unit.gain is None else unit.gain(h))
            values[unit.name] = h
            for s in unit.sources:  # free what no later unit reads
                if last_use[s] == i:
                    del values[s]
        out = values[self._output]
        return out if self.readout_shape is None else out.reshape(*out.shape[:2], *self.readout_shape)

    def forward(self, x: Tensor) -> Tensor:
        out = self.steps(x)
        # Sum step by step, then divide: SpikingResNet's order of operations, so logits match it.
        total = out[0].clone()
        for t in range(1, out.shape[0]):
            total += out[t]
        return total / out.shape[0]


def _input_shape(name: str, node: Any) -> tuple[int, ...]:
    """The Input node's shape (positive integers), without the batch and time axes."""
    try:
        shape = tuple(int(v) for v in np.atleast_1d(node.input_type["input"]))
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        shape = ()
    if not shape or min(shape) < 1:
        raise NIRGraphError(f"NIR Input node {name!r} has no valid shape: expected positive integers")
    return shape


def _readout_shape(graph: Any, output: Any) -> tuple[int, ...] | None:
    """The graph's ``readout_shape`` metadata, when it holds positive integers with the Output's size."""
    meta = getattr(graph, "metadata", None)
    stored = meta.get("readout_shape") if isinstance(meta, dict) else None
    if stored is None:
        return None
    try:
        shape = tuple(int(v) for v in np.atleast_1d(stored))
        size = int(np.prod(np.atleast_1d(output.output_type["output"])))
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        shape, size = (), -1
    if not shape or min(shape) < 1 or int(np.prod(shape)) != size:
        raise NIRGraphError(
            f"the graph's readout_shape metadata {stored!r} is invalid: expected positive sizes whose "
            "product is the Output node's size"
        )
    return shape


def _order(units: dict[str, _Unit]) -> list[_Unit]:
    """Units in an order where every unit comes after its sources (the graph must be acyclic).

    Kahn's algorithm, linear in units and edges. The order is by depth (the longest path from a unit
    without sources), then by position in ``units``: what repeatedly taking every unit whose sources
    are all placed gives, so graphs import in the same order as before this was linear.
    """
    waiting = {name: len(u.sources) for name, u in units.items()}
    users: dict[str, list[str]] = {name: [] for name in units}
    for u in units.values():
        for s in u.sources:
            users[s].append(u.name)
    depth = dict.fromkeys((name for name, n in waiting.items() if n == 0), 0)
    ready = deque(depth)
    while ready:
        name = ready.popleft()
        for user in users[name]:
            depth[user] = max(depth.get(user, 0), depth[name] + 1)
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    stuck = sorted(name for name, n in waiting.items() if n > 0)
    if stuck:
        raise NIRGraphError(f"the NIR graph has a cycle through {stuck[:5]}")
    rounds: list[list[_Unit]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name, u in units.items():
        rounds[depth[name]].append(u)
    return [u for r in rounds for u in r]
