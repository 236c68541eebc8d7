"""MLF neuron micro-benchmark: the naive reference, the vectorised path and the fused kernel."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..nn.neurons import mlf
from .timing import interleaved, stats

__all__ = ["IMPLS", "neuron_benchmark"]

IMPLS = ("reference", "vectorized", "fused")


def _neuron_calls(x: Tensor, levels: int, impl: str) -> dict[str, Callable[[], Any]]:
    xg, grad = x.clone().requires_grad_(), torch.randn_like(x)

    def fwd() -> None:
        with torch.no_grad():
            mlf(x, levels, backend=impl)

    def fwd_bwd() -> None:
        xg.grad = None
        mlf(xg, levels, backend=impl).backward(grad)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def neuron_benchmark(
    device: torch.device, configs: Sequence[tuple[int, int]], shape: Sequence[int], repeats: int
) -> list[dict[str, Any]]:
    """Per (T, K): every implementation, forward under no_grad and forward+backward."""
    rows = []
    for steps, levels in configs:
        x = torch.randn(steps, *shape, device=device) * 1.5
        calls = {impl: _neuron_calls(x, levels, impl) for impl in IMPLS}
        for mode in ("fwd", "fwd+bwd"):
            times = interleaved({impl: calls[impl][mode] for impl in IMPLS}, repeats, device)
            ref = statistics.median(times["reference"])
            for impl in IMPLS:
                row = {"T": steps, "K": levels, "shape": [steps, *shape], "impl": impl, "mode": mode}
                row.update(stats(times[impl]))
                row["speedup_vs_reference"] = ref / row["median_s"]
                rows.append(row)
    return rows
