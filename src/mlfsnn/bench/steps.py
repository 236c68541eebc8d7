"""Training-step benchmark of the paper's nets against twins (ReLU, vectorised, reference neurons),
eager and ``torch.compile``d, and the peak extra memory of one step measured in a fresh process (see
:mod:`mlfsnn.bench`)."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nn import MLF, create_model
from ..nn.fused import fusion
from ..nn.neurons import mlf
from .timing import interleaved, stats, wall_call

__all__ = [
    "ALL_VARIANTS",
    "COMPILED_VARIANTS",
    "VARIANTS",
    "CompileOptions",
    "base_variant",
    "cuda_step_memory",
    "make_twin",
    "memory_benchmark",
    "memory_child",
    "train_benchmark",
    "train_rows",
    "train_setup",
]

# mlf_unfused: the fused kernel with tdBN run separately before it (what the fusion saves).
VARIANTS = ("mlf", "mlf_unfused", "relu", "vectorized", "reference")
COMPILED_VARIANTS = ("mlf_compiled", "relu_compiled")  # torch.compile of the eager twin
ALL_VARIANTS = VARIANTS + COMPILED_VARIANTS
QUICK_OVERRIDES = {"depth": 8, "widths": (4, 8, 16)}


@dataclass(frozen=True)
class CompileOptions:
    """How ``*_compiled`` variants call ``torch.compile`` (static shapes, as the trainer does).

    ``fullgraph=False`` by default: with the kernels behind an opaque call dynamo breaks the graph at
    every neuron; with them registered as custom ops the whole net is one graph.
    """

    fullgraph: bool = False
    backend: str = "inductor"
    mode: str | None = None  # None: torch's default mode


class _NeuronTwin(nn.Module):
    """An MLF module's stand-in running a named :func:`mlf` backend with the same parameters."""

    def __init__(self, neuron: MLF, backend: str) -> None:
        super().__init__()
        self.args = (neuron.levels, neuron.threshold, neuron.width, neuron.decay, neuron.detach_reset)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return mlf(x, *self.args, backend=self.backend)


def make_twin(model: nn.Module, variant: str) -> nn.Module:
    """A copy of ``model`` whose MLF modules are replaced according to ``variant`` (see VARIANTS)."""
    twin = copy.deepcopy(model)
    if variant in ("mlf", "mlf_unfused"):  # the same modules; mlf_unfused runs under fusion(False)
        return twin
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MLF):
                new = nn.ReLU() if variant == "relu" else _NeuronTwin(child, variant)
                setattr(parent, name, new)
    return twin


def base_variant(variant: str) -> str:
    """``mlf_compiled`` -> ``mlf``: the eager twin a compiled variant is built from."""
    return variant.removesuffix("_compiled")


def _inductor_config(device: torch.device) -> contextlib.AbstractContextManager:
    """fp32 on CPU: inductor's layout optimisation would switch convolutions to channels-last, whose
    fp32 1x1 stride-2 backward crashes oneDNN in torch 2.14 (as in ``runner.builders``)."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(layout_optimization=False)


def train_setup(
    cfg: tuple[str, int, int, int, int],
    variants: Sequence[str],
    device: torch.device,
    quick: bool,
    compile_opts: CompileOptions | None = None,
    autocast: torch.dtype | None = None,
) -> tuple[dict[str, Callable[[], Any]], dict[str, nn.Module], Tensor]:
    """One training-step closure per variant (same init, same batch); also the models and the input.

    ``*_compiled`` variants run ``torch.compile`` of their eager twin: the first call compiles.
    ``autocast``: a dtype runs forward and loss under ``torch.autocast`` (None: the recipes' fp32).
    """
    name, steps, batch, channels, size = cfg
    opts = compile_opts or CompileOptions()
    torch.manual_seed(0)
    base = create_model(name, **(QUICK_OVERRIDES if quick else {}))
    if "dvs" in name:  # event-count frames
        x = torch.randint(0, 4, (steps, batch, channels, size, size), device=device).float()
    else:
        x = torch.randn(steps, batch, channels, size, size, device=device)
    y = torch.randint(0, base.fc.out_features, (batch,), device=device)
    steps_fns, models = {}, {}
    for variant in variants:
        model = make_twin(base, base_variant(variant)).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        compiled = variant.endswith("_compiled")
        run_model: nn.Module = model
        if compiled:
            kwargs = {"mode": opts.mode} if opts.mode else {}
            run_model = torch.compile(
                model, fullgraph=opts.fullgraph, dynamic=False, backend=opts.backend, **kwargs
            )

        def step(
            model: nn.Module = run_model,
            opt: torch.optim.Optimizer = opt,
            compiled: bool = compiled,
            fused: bool = base_variant(variant) != "mlf_unfused",
        ) -> None:
            with _inductor_config(device) if compiled else contextlib.nullcontext(), fusion(fused):
                opt.zero_grad(set_to_none=True)
                amp = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
                with amp:
                    loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()

        steps_fns[variant], models[variant] = step, model
    return steps_fns, models, x


def train_rows(
    cfg: tuple, times: dict[str, list[float]], first_s: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Rows of one config: stats, samples/s and ratios. ``vs_relu``: against the ReLU twin run the same
    way (eager or compiled); ``vs_reference``: the eager naive reference; ``vs_eager``: a compiled
    variant against its eager twin. ``compile_s``: the first call (tracing + compiling + one step)
    minus the median step."""
    medians = {v: statistics.median(ts) for v, ts in times.items()}
    rows = []
    for variant, ts in times.items():
        compiled = variant.endswith("_compiled")
        row = {"net": cfg[0], "T": cfg[1], "batch": cfg[2], "input": [cfg[3], cfg[4], cfg[4]]}
        row.update(variant=variant, compiled=compiled, **stats(ts))
        row["samples_per_s"] = cfg[2] / row["median_s"]
        others = {
            "vs_relu": "relu_compiled" if compiled else "relu",
            "vs_reference": "reference",
            "vs_eager": base_variant(variant) if compiled else None,
        }
        for key, other in others.items():
            if other in medians and other != variant:
                row[key] = row["median_s"] / medians[other]
        if first_s and variant in first_s:
            row["first_call_s"] = first_s[variant]
            row["compile_s"] = max(0.0, first_s[variant] - row["median_s"])
        rows.append(row)
    return rows


def train_benchmark(
    device: torch.device,
    configs: Sequence[tuple],
    variants: Sequence[str],
    repeats: int,
    quick: bool,
    compile_opts: CompileOptions | None = None,
) -> list[dict[str, Any]]:
    """Per config, every variant timed interleaved; compiled variants compile (timed) before warm-up."""
    rows = []
    for cfg in configs:
        fns, _, _ = train_setup(cfg, variants, device, quick, compile_opts)
        first_s = {v: wall_call(fn, device) for v, fn in fns.items() if v.endswith("_compiled")}
        warmup = 2 if first_s else 1  # a compiled model's second call may still specialise
        times = interleaved(fns, repeats, device, warmup=warmup)
        rows += train_rows(cfg, times, first_s)
        del fns
        gc.collect()
    return rows


def cuda_step_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, int]:
    """One more step after warm-up: peak allocated bytes over it, and that minus the allocation before it
    (the extra memory a step needs on top of model, optimizer state and input)."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_bytes": peak, "peak_extra_bytes": peak - base}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(spec: dict[str, Any]) -> None:
    """Runs in a fresh process (see module docstring); prints ``{"net/variant": bytes or null}``."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    result: dict[str, int | None] = {}
    for cfg in spec["configs"]:
        for variant in spec["variants"]:
            fns, models, _ = train_setup(tuple(cfg), [variant], device, spec["quick"])
            fns[variant]()  # warm-up: momentum buffers, kernel build, lazy init
            gc.collect()
            peak: int | None
            if device.type == "cuda":
                peak = cuda_step_memory(fns[variant], device)["peak_extra_bytes"]
            else:
                try:
                    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                    base = _status_kib("VmRSS")
                    fns[variant]()
                    peak = max(0, _status_kib("VmHWM") - base) * 1024
                except (OSError, KeyError):
                    peak = None  # not Linux: no honest way to reset the peak
            result[f"{cfg[0]}/{variant}"] = peak
            del fns, models
            gc.collect()
    print(json.dumps(result))


def memory_benchmark(
    device: torch.device, configs: Sequence[tuple], variants: Sequence[str], threads: int, quick: bool
) -> dict[str, int | None]:
    eager = [v for v in variants if not v.endswith("_compiled")]  # compiling again in a child: too slow
    if not eager:
        return {}
    spec = {
        "device": str(device),
        "configs": [list(c) for c in configs],
        "variants": eager,
        "threads": threads,
        "quick": quick,
    }
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = (
        "import json, sys; from mlfsnn.bench.steps import memory_child; memory_child(json.loads(sys.argv[1]))"
    )
    cmd = [sys.executable, "-c", code, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        print(f"memory benchmark failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])
