"""GPU check, the timed sections: the neuron micro-benchmark and the paper nets' training steps.

Each section runs in its own process (see :mod:`mlfsnn.bench.gpu_check`) under a time budget. It
writes what it has after every item (:class:`Part`), so a process killed at its budget still leaves
its finished items, and before each item it checks the time left (:class:`Budget`) and records
``partial: time budget`` instead of starting what cannot finish.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_text
from .neuron import neuron_benchmark
from .steps import CompileOptions, cuda_step_memory, train_rows, train_setup
from .timing import interleaved, wall_call

__all__ = [
    "RECIPES",
    "Budget",
    "Part",
    "Recipe",
    "graph_breaks",
    "neuron_section",
    "train_cfg",
    "train_section",
]


@dataclass(frozen=True)
class Recipe:
    """A paper recipe's shapes and length (configs/experiment/NAME.yaml; tests check they agree)."""

    time_steps: int
    batch: int
    channels: int
    size: int
    epochs: int
    train_samples: int  # CIFAR10: 50000; DVS-Gesture: users 1-23 = 1176; CIFAR10-DVS: 90 % of 10000


RECIPES = {
    "dvs_gesture": Recipe(40, 28, 2, 32, 120, 1176),
    "cifar10": Recipe(4, 64, 3, 32, 110, 50000),
    "cifar10_dvs": Recipe(10, 32, 2, 42, 100, 9000),
}
EAGER = ("mlf", "relu", "vectorized", "reference")
TIMED_WITH_COMPILED = ("mlf", "relu", "mlf_compiled", "relu_compiled")


class Budget:
    """Seconds left until ``deadline`` (wall-clock epoch seconds, set by the parent when it started this
    process, so interpreter start-up counts); a reserve is kept for writing the results."""

    def __init__(self, deadline: float, reserve: float = 3.0) -> None:
        self.deadline = deadline - reserve

    def left(self) -> float:
        return self.deadline - time.time()


@dataclass
class Part:
    """A section's result, rewritten atomically to ``path`` by :meth:`save`."""

    path: Path
    status: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def save(self) -> None:
        data = {"status": self.status, "result": self.result, "error": self.error}
        atomic_write_text(self.path, json.dumps(data, indent=1, default=str))


def neuron_section(device: torch.device, smoke: bool, budget: Budget, part: Part) -> None:
    """Naive reference, vectorised path and fused kernel, forward and forward+backward, per (T, K)."""
    if smoke:
        cfgs, shape, repeats = [(4, 3)], (2, 4, 8, 8), 1
    else:  # [T, 28, 16, 32, 32]: the first stage of the DVS-Gesture net at the paper's batch
        cfgs, shape, repeats = [(40, 3), (4, 3), (10, 3), (40, 1), (40, 4)], (28, 16, 32, 32), 10
    rows: list[dict[str, Any]] = []
    part.result = {"shape": list(shape), "repeats": repeats, "rows": rows}
    for i, cfg in enumerate(cfgs):
        if budget.left() < 10.0:
            part.status = "partial: time budget"
            part.result["skipped"] = [list(c) for c in cfgs[i:]]
            part.save()
            return
        rows += neuron_benchmark(device, [cfg], shape, repeats)
        part.save()
    part.status = "ok"
    part.save()


def train_cfg(net: str, smoke: bool) -> tuple[str, int, int, int, int]:
    r = RECIPES[net]
    return (net, 2, 2, r.channels, 16) if smoke else (net, r.time_steps, r.batch, r.channels, r.size)


def graph_breaks(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Dynamo's graphs and graph breaks for one forward (tracing only; no inductor compile)."""
    t0 = time.perf_counter()
    explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()  # leave no traced state behind for the real compile
    return {
        "graph_count": explained.graph_count,
        "graph_break_count": explained.graph_break_count,
        "break_reasons": sorted({str(r.reason)[:200] for r in explained.break_reasons})[:10],
        "wall_s": time.perf_counter() - t0,
    }


def _memory(fns: dict[str, Any], device: torch.device, net: str) -> dict[str, dict[str, int]]:
    if device.type != "cuda":
        return {}
    return {f"{net}/{v}": cuda_step_memory(fn, device) for v, fn in fns.items()}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _compile(fns: dict[str, Any], variant: str, device: torch.device, res: dict[str, Any]) -> bool:
    """The first call of a compiled variant (= its compile), timed; on failure (e.g. ``fullgraph=True``
    meeting a graph break) the variant is dropped with its error."""
    try:
        res["compile_first_call_s"][variant] = wall_call(fns[variant], device)
        return True
    except Exception as err:  # recorded; the eager results stand
        res.setdefault("compile_errors", {})[variant] = f"{type(err).__name__}: {str(err)[:2000]}"
        del fns[variant]
        return False


def _time_compiled(
    cfg: tuple, fns: dict[str, Any], device: torch.device, smoke: bool, budget: Budget, part: Part
) -> None:
    """Time what is compiled so far interleaved with the eager MLF and ReLU nets, and save the rows."""
    res = part.result
    # a compiled step is taken to cost at most its eager twin; keep a third of what is left spare
    round_s = sum(r["median_s"] for r in res["eager"] if r["variant"] in ("mlf", "relu")) * len(fns) / 2
    repeats = 3 if smoke else max(3, min(10, int(budget.left() * 0.66 / max(round_s, 1e-6)) - 3))
    times = interleaved(fns, repeats, device, warmup=2)
    res["compiled"] = train_rows(cfg, times, res["compile_first_call_s"])
    res["compiled_repeats"] = repeats
    res["memory"].update(_memory({v: f for v, f in fns.items() if v.endswith("_compiled")}, device, cfg[0]))
    part.save()


def _compiled_phase(
    cfg: tuple,
    device: torch.device,
    smoke: bool,
    budget: Budget,
    part: Part,
    opts: CompileOptions,
    amp: torch.dtype | None,
) -> None:
    """Compile the MLF net (timed) and time it; then, if the budget allows, its ReLU twin, and time all
    again. The MLF net's rows are saved before the ReLU twin's compile can run out of time."""
    res = part.result
    res["compile_first_call_s"] = {}
    fns, models, x = train_setup(cfg, TIMED_WITH_COMPILED, device, smoke, opts, amp)
    relu_compiled = fns.pop("relu_compiled")
    if budget.left() > 40.0:
        try:
            res["graph_breaks"] = graph_breaks(models["mlf"], x)
        except Exception as err:  # informational only
            res["graph_breaks"] = {"error": f"{type(err).__name__}: {err}"}
        part.save()
    if budget.left() < 30.0:
        res.setdefault("skipped", []).append("mlf_compiled")
    elif _compile(fns, "mlf_compiled", device, res):
        _time_compiled(cfg, fns, device, smoke, budget, part)
    need = 1.0 * res["compile_first_call_s"].get("mlf_compiled", 20.0) + 15.0  # ReLU: a simpler graph
    if budget.left() < need:
        res.setdefault("skipped", []).append("relu_compiled")
    else:
        fns["relu_compiled"] = relu_compiled
        if _compile(fns, "relu_compiled", device, res):
            _time_compiled(cfg, fns, device, smoke, budget, part)
    del fns, models, relu_compiled
    _free(device)


def train_section(
    device: torch.device,
    smoke: bool,
    budget: Budget,
    part: Part,
    net: str,
    opts: CompileOptions,
    autocast: str | None = None,
) -> None:
    """One net at the paper's batch: eager variants (5 repeats), then the compiled phase (10 repeats,
    fewer when the budget is short). A net that fails to compile makes the section ``failed``.

    ``autocast``: ``"bfloat16"`` runs forward and loss under autocast; None (the recipes: fp32) not.
    """
    cfg = train_cfg(net, smoke)
    amp = getattr(torch, autocast) if autocast else None
    part.result = {"cfg": list(cfg), "autocast": autocast, "compile": vars(opts), "memory": {}}
    fns, _, _ = train_setup(cfg, EAGER, device, smoke, None, amp)
    times = interleaved(fns, 1 if smoke else 5, device)
    part.result["eager"] = train_rows(cfg, times)
    part.result["memory"] = _memory(fns, device, net)
    part.save()
    del fns
    _free(device)
    _compiled_phase(cfg, device, smoke, budget, part, opts, amp)
    if part.result.get("compile_errors"):
        part.status = "failed"
    else:
        part.status = "partial: time budget" if part.result.get("skipped") else "ok"
    part.save()
