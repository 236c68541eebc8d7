"""Export an mlfsnn network to NIR and import NIR graphs back (docs/export.md).

The graph is the model's inference-time computation (running statistics, never batch statistics),
recorded by running the model once (:mod:`mlfsnn.nn.nir_trace`), so any network built from the
library's blocks exports, not only :class:`~mlfsnn.nn.resnet.SpikingResNet`:

* every tdBN is folded into the convolution (or linear layer) before it (computed in float64, stored
  as ``dtype``); one with nothing to fold into, such as ``bn0``, the input tdBN (the stem convolution
  zero-pads *after* normalising), becomes a 1x1 ``Conv2d`` with a diagonal weight;
* an MLF neuron with K levels becomes K ``LIF`` nodes fed by the same edges, thresholds
  ``threshold + k * width``, hard reset to 0; their outputs all have edges into the next layer, and
  NIR sums the edges into a node, which is the count ``s[t]`` (docs/method.md §1);
* a residual sum ("fire, then add" or "add, then fire", docs/method.md §3) is the same sum of edges;
* the output is averaged over T (the readout convention, stored in the graph's metadata).

Two forms (:mod:`mlfsnn.nn.nir_forms`): ``portable`` (default) runs through snnTorch's, norse's and
nirtorch's importers as shipped; ``spec`` is the literal mapping (``AvgPool2d``, ``Flatten``,
``Affine``, input coefficient 1).

Discrete time: NIR's LIF is ``tau dv/dt = (v_leak - v) + r I``. One forward-Euler step of ``dt``
gives ``v[t] = (1 - dt/tau) v[t-1] + (dt r / tau) I[t]``, so ``tau = dt / (1 - decay)`` gives the
MLF leak ``u[t] = decay * u[t-1] + x[t]``; ``v_leak = 0``, ``v_reset = 0``. ``decay = 1`` (no leak)
becomes an ``IF`` node with ``r = 1 / dt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .nir_checks import check_dt
from .nir_forms import FORMS, META, build, fold_conv_tdbn
from .nir_import import CONVENTIONS, DEFAULT_DT, NIRNetwork
from .nir_trace import NIRExportError, trace

if TYPE_CHECKING:  # nir (and h5py under it) is imported only when a graph is built or read
    import nir as nir_t

__all__ = [
    "CONVENTIONS",
    "DEFAULT_DT",
    "FORMS",
    "META",
    "NIRExportError",
    "fold_conv_tdbn",
    "from_nir",
    "to_nir",
]

READOUT = "mean over time steps of the Output node's per-step values"
# norse's default step (its to_nir and from_nir), what a norse export was written with unless told.
NORSE_DT = 1e-3


def to_nir(
    model: nn.Module,
    input_shape: Sequence[int],
    dt: float = DEFAULT_DT,
    dtype: Any = np.float32,
    form: str = "portable",
) -> nir_t.NIRGraph:
    """The NIR graph of ``model``'s eval-mode computation for inputs of shape ``input_shape``.

    ``input_shape`` is one time step of one sample (``(C, H, W)`` for images). The model is run once
    on zeros to record its layers and read, never changed (its training flags are restored); tdBN
    layers use their running statistics. ``dt`` is the step of the discrete-time mapping (stored as
    the graph's ``dt`` metadata), ``dtype`` the dtype of every stored array (float64 keeps the fold
    exact to ~1e-16), ``form`` ``"portable"`` or ``"spec"`` (module docstring). A module or an
    operation that has no NIR form is refused in one line (:class:`NIRExportError`, a ``ValueError``).
    """
    import nir

    if not isinstance(model, nn.Module):
        raise TypeError(f"to_nir exports an nn.Module, got {type(model).__name__}")
    shape = tuple(int(v) for v in input_shape)
    if not shape or min(shape) < 1:
        raise NIRExportError(f"input_shape must be positive sizes, e.g. (C, H, W), got {tuple(input_shape)}")
    stem = getattr(model, "conv1", None)
    if isinstance(stem, nn.Conv2d) and (len(shape) != 3 or shape[0] != stem.in_channels):
        raise NIRExportError(
            f"input_shape must be (C, H, W) with C = {stem.in_channels} (the model's channels), got {shape}"
        )
    if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and 0 < dt < math.inf):
        raise NIRExportError(f"dt must be a finite number > 0, got {dt!r}")
    if form not in FORMS:
        raise NIRExportError(f"form={form!r} is invalid: expected one of {', '.join(FORMS)}")
    layers = trace(model, shape)
    nodes, edges = build(nir, layers, form, float(dt), np.dtype(dtype))
    meta: dict[str, Any] = {"producer": "mlfsnn", "dt": float(dt), "readout": READOUT, "form": form}
    meta["readout_shape"] = list(layers["output"].shape)
    if isinstance(getattr(model, "block", None), str):
        meta["block"] = model.block
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def from_nir(
    graph: nir_t.NIRGraph,
    dt: float | None = None,
    dtype: torch.dtype = torch.float32,
    convention: str = "nir",
) -> nn.Module:
    """A module running ``graph`` on time-first input ``[T, B, C, H, W]``; returns ``[B, outputs]``.

    ``dt`` defaults to the graph's ``dt`` metadata, else :data:`DEFAULT_DT`; either must be a finite
    number > 0, and a graph the import cannot run is refused in one line (:class:`NIRGraphError`,
    a ``ValueError`` and a :class:`~mlfsnn.errors.ConfigError`). Neuron layers are
    :class:`~mlfsnn.MLF` modules at the names they had in the exported model (so
    :class:`~mlfsnn.NeuronMonitor` works unchanged); parameters are created in ``dtype``.
    See :class:`mlfsnn.nn.nir_import.NIRNetwork` for what a generic graph may contain.

    ``convention`` says how the producer meant the neuron parameters: ``"nir"`` (NIR's equations,
    what mlfsnn and snnTorch write) or ``"norse"`` (what norse 1.1's ``to_nir`` writes: ``IF``'s
    ``r`` is the input gain per step, ``LIF``'s ``tau`` is ``dt / tau_mem_inv``, the Input's type
    has the sample's batch axis; ``dt`` is then norse's, 1e-3 unless given, as in norse).
    """
    if dt is not None:
        return NIRNetwork(graph, check_dt(dt), dtype, convention)
    meta = getattr(graph, "metadata", None)
    default = NORSE_DT if convention == "norse" else DEFAULT_DT
    stored = meta.get("dt", default) if isinstance(meta, dict) else default
    return NIRNetwork(graph, check_dt(stored, "the graph's dt metadata: dt"), dtype, convention)
