"""Training-step benchmark of the paper's nets against twins (ReLU, vectorised, reference neurons),
and the peak extra memory of one step measured in a fresh process (see :mod:`mlfsnn.bench`)."""

from __future__ import annotations

import copy
import gc
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nn import MLF, create_model
from ..nn.neurons import mlf
from .timing import interleaved, stats

__all__ = ["VARIANTS", "make_twin", "memory_benchmark", "memory_child", "train_benchmark"]

VARIANTS = ("mlf", "relu", "vectorized", "reference")
QUICK_OVERRIDES = {"depth": 8, "widths": (4, 8, 16)}


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
    if variant == "mlf":
        return twin
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MLF):
                new = nn.ReLU() if variant == "relu" else _NeuronTwin(child, variant)
                setattr(parent, name, new)
    return twin


def _train_setup(
    cfg: tuple[str, int, int, int, int], variants: Sequence[str], device: torch.device, quick: bool
) -> tuple[dict[str, Callable[[], Any]], dict[str, nn.Module]]:
    name, steps, batch, channels, size = cfg
    torch.manual_seed(0)
    base = create_model(name, **(QUICK_OVERRIDES if quick else {}))
    if "dvs" in name:  # event-count frames
        x = torch.randint(0, 4, (steps, batch, channels, size, size), device=device).float()
    else:
        x = torch.randn(steps, batch, channels, size, size, device=device)
    y = torch.randint(0, base.fc.out_features, (batch,), device=device)
    steps_fns, models = {}, {}
    for variant in variants:
        model = make_twin(base, variant).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        steps_fns[variant], models[variant] = step, model
    return steps_fns, models


def train_benchmark(
    device: torch.device, configs: Sequence[tuple], variants: Sequence[str], repeats: int, quick: bool
) -> list[dict[str, Any]]:
    rows = []
    for cfg in configs:
        fns, _ = _train_setup(cfg, variants, device, quick)
        times = interleaved(fns, repeats, device)
        medians = {v: statistics.median(ts) for v, ts in times.items()}
        for variant in variants:
            row = {"net": cfg[0], "T": cfg[1], "batch": cfg[2], "input": [cfg[3], cfg[4], cfg[4]]}
            row.update(variant=variant, **stats(times[variant]))
            row["samples_per_s"] = cfg[2] / row["median_s"]
            for other in ("relu", "reference"):
                if other in medians:
                    row[f"vs_{other}"] = row["median_s"] / medians[other]
            rows.append(row)
        del fns
        gc.collect()
    return rows


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
            fns, models = _train_setup(tuple(cfg), [variant], device, spec["quick"])
            fns[variant]()  # warm-up: momentum buffers, kernel build, lazy init
            gc.collect()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memorystats(device)
                base = torch.cuda.memory_allocated(device)
                fns[variant]()
                peak: int | None = torch.cuda.max_memory_allocated(device) - base
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
    spec = {
        "device": str(device),
        "configs": [list(c) for c in configs],
        "variants": list(variants),
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
