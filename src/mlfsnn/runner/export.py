"""Export a saved checkpoint to a NIR file (the work behind ``snn-export``; docs/export.md).

The model is rebuilt from the config stored in the checkpoint, as ``snn-eval`` does, but without
loading a dataset: the input channels and classes are read from the checkpoint's own weights and
the image size from the config, so a checkpoint exports on a machine that has none of its data.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from ..data import DataInfo
from ..errors import CheckpointError, ConfigError
from ..files import atomic_write, os_reason
from ..nn import from_nir, to_nir
from ..nn.neurons import MLF
from ..nn.nir import DEFAULT_DT, NORSE_DT
from ..nn.nir_forms import consumers
from .builders import build_model
from .checkpoint import load_weights
from .config import check_memory
from .evaluate import check_writable, default_out, load_with_config

__all__ = ["TARGETS", "default_export_path", "export_checkpoint", "input_shape"]

# Datasets whose image size is fixed by the data rather than set by ``dataset.size``.
FIXED_SIZES = {"cifar10": 32}
# The nir package checks a graph's types in time quadratic in its nodes (NIRGraph.infer_types: ~20 s
# for 1,800 nodes measured on a shared CPU, so minutes at this bound); a ResNet-110 with K=16 has ~1,900.
MAX_NODES = 5000
# snn-export target=...: the graph's form and the dt it is written with unless dt= says otherwise.
# The three consumer targets write the same portable graph; they differ in dt and in what is refused.
TARGETS: dict[str, tuple[str, float]] = {
    "nir": ("portable", DEFAULT_DT),
    "snntorch": ("portable", DEFAULT_DT),  # snnTorch's import_nir hard-codes dt = 1e-4
    "norse": ("portable", NORSE_DT),  # norse.torch.from_nir's default dt
    "spec": ("spec", DEFAULT_DT),
}


def default_export_path(checkpoint: Path, out: Path | None = None) -> Path:
    """``<run dir>/model.nir`` for a checkpoint inside a run directory, else ``model.nir``; a bare
    file name ``out`` goes beside the run too (see :func:`~.evaluate.default_out`)."""
    return default_out(checkpoint, out, name="model.nir")


def input_shape(cfg: Any, weights: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """``(C, H, W)`` of one time step: C from the stem convolution, the size from the config."""
    stem = weights.get("conv1.weight")
    if stem is None or stem.dim() != 4:
        raise CheckpointError("checkpoint has no stem convolution conv1.weight [C_out, C_in, 3, 3]")
    size = cfg.dataset.get("size") or FIXED_SIZES.get(str(cfg.dataset.name))
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(
            f"dataset.size={size!r} is invalid: the export needs the input size (an integer >= 1)"
        )
    return int(stem.shape[1]), size, size


def _build(cfg: Any, weights: dict[str, torch.Tensor], shape: tuple[int, int, int], path: Path) -> Any:
    fc = weights.get("fc.weight")
    if fc is None or fc.dim() != 2:
        raise CheckpointError(f"checkpoint {path} has no classifier fc.weight [classes, features]")
    # Only what build_model reads matters here; sample counts are unknown without the data.
    info = DataInfo(str(cfg.dataset.name), int(fc.shape[0]), shape[0], shape[1:], True, 0, 0)
    model = build_model(cfg, info)
    load_weights(model, weights, f"checkpoint {path}")
    return model.eval()


def _check_nodes(model: nn.Module, levels: int) -> None:
    """Refuse, before the graph is built, a model whose NIR graph has more than :data:`MAX_NODES`."""
    neurons = [m for m in model.modules() if isinstance(m, MLF)]
    lif = sum(m.levels for m in neurons)
    # input, avg_pool, flatten, fc, output (the portable form has fewer); bn0 is a Conv2d node of its own
    nodes = lif + sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 5 + (model.bn0 is not None)
    if nodes > MAX_NODES:
        raise ConfigError(
            f"neuron.levels={levels} cannot be exported: the NIR graph would have {nodes:,} nodes ({levels} "
            f"LIF nodes for each of {len(neurons)} neuron layers) and snn-export writes at most "
            f"{MAX_NODES:,} (the nir package checks graphs in time quadratic in nodes); lower neuron.levels"
        )


def _write(graph: Any, out: Path) -> None:
    """Write the graph through :func:`~mlfsnn.files.atomic_write`: never half a file at ``out``, never
    through a link there; an ``OSError`` (a full disk, a read-only folder) is one line."""
    import nir

    def write(f: BinaryIO) -> None:
        # h5py's contract for file objects includes reading back, which the write-only temp file
        # cannot: build the file in memory (gzip-compressed, a fraction of the graph), then copy.
        buffer = io.BytesIO()
        nir.write(buffer, graph)
        f.write(buffer.getbuffer())

    try:
        atomic_write(out, write)
    except OSError as exc:
        raise ConfigError(f"out={out} cannot be written: {os_reason(exc, out)}") from None


def _check_target(target: str, dt: float, cfg: Any) -> None:
    """Refuse, before any work, what the chosen consumer is known to run wrongly (docs/export.md)."""
    if target != "snntorch":
        return
    if dt != DEFAULT_DT:
        raise ConfigError(
            f"dt={dt!r} is invalid with target=snntorch: snntorch's import_nir assumes dt = 1e-4 "
            "(leave dt unset)"
        )
    if float(cfg.neuron.decay) >= 1:
        raise ConfigError(
            "neuron.decay=1 cannot be exported with target=snntorch: its IF import asserts r == 1 and "
            "builds a leaky subtract-reset neuron; use target=nir (norse, nirtorch, mlfsnn run it)"
        )


def export_checkpoint(
    checkpoint: Path,
    overrides: list[str],
    out: Path | None = None,
    dt: float | None = None,
    target: str = "nir",
) -> dict[str, Any]:
    """Write ``checkpoint``'s model as a NIR graph to ``out`` and return a summary.

    ``target`` (:data:`TARGETS`) chooses the graph's form and default ``dt``. The summary's
    ``max_abs_logit_diff`` compares the model with the written file read back and run through
    :func:`~mlfsnn.nn.from_nir` on one random input (T from the config, batch 2, float32): ~1e-7
    normally; larger only when rounding moved a potential across a threshold (docs/export.md).
    ``consumers`` says what each shipped importer makes of the graph.
    """
    try:
        import nir
    except ImportError:  # checked before any work: the export cannot run without it
        raise ConfigError("NIR export needs the nir package: pip install 'nir>=1.0.8,<2'") from None
    if target not in TARGETS:
        raise ConfigError(f"target={target!r} is invalid: expected one of {', '.join(TARGETS)}")
    form, default_dt = TARGETS[target]
    dt = default_dt if dt is None else dt
    if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and 0 < dt < math.inf):
        raise ConfigError(f"dt={dt!r} is invalid: expected a finite number > 0")
    out = default_export_path(checkpoint, out)
    check_writable(out)
    state, cfg = load_with_config(checkpoint, overrides)
    _check_target(target, float(dt), cfg)
    shape = input_shape(cfg, state["model"])
    check_memory(cfg, "export")  # before the graph's arrays and the check input are allocated
    model = _build(cfg, state["model"], shape, checkpoint)
    _check_nodes(model, int(cfg.neuron.levels))
    graph = to_nir(model, shape, dt=dt, form=form)
    graph.metadata["time_steps"] = int(cfg.time_steps)  # what the model was trained / configured with
    graph.metadata["target"] = target
    _write(graph, out)
    try:  # the file as written, not the graph in memory: what a user will load
        written = nir.read(out)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"out={out} was written but cannot be read back: {exc}") from None
    x = torch.rand(int(cfg.time_steps), 2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (from_nir(written)(x) - model(x)).abs().max().item()
    kinds = sorted({type(n).__name__ for n in graph.nodes.values()})
    return {
        "checkpoint": str(checkpoint.resolve()),
        "out": str(out),
        "target": target,
        "form": form,
        "input_shape": list(shape),
        "time_steps": int(cfg.time_steps),
        "dt": dt,
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "node_types": kinds,
        "max_abs_logit_diff": diff,
        "consumers": consumers(graph),
    }
