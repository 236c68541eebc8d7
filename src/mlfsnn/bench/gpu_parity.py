"""GPU check, kernel parity: the fused kernel against :func:`mlf_reference`, case by case.

Spikes must be identical (``torch.equal``); input gradients must be close. The kernels compute in fp32
whatever the input dtype, so a bf16 input is compared with the reference run on ``x.float()`` (the
same values), with the tolerance of one bf16 rounding of the gradient. Every case also plants
inputs exactly on each level's threshold and one ulp to either side in the first step, where an FMA
contraction or a ``>=`` would flip a spike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..nn.neurons import level_thresholds, mlf, mlf_reference
from .gpu_sections import Budget, Part

__all__ = ["PARAMS", "parity_cases", "parity_section", "run_case"]

# (threshold, width, decay): the paper's neuron, and one with a negative threshold and a slow leak.
PARAMS = ((0.6, 1.0, 0.25), (-0.3, 0.5, 0.9))
TOLERANCE = {"float32": (1e-5, 1e-5), "bfloat16": (2**-7, 1e-5)}  # (rtol, atol) on the input gradient
# A [T, N] case's N is the product of the trailing dims; the Triton block is 256 columns.
# Main and large shapes first: a run cut short by its budget loses odd shapes, not those.
CUDA_SHAPES = [(4, 4096), (40, 28 * 16 * 32 * 32), (1, 300), (7, 257), (3, 1), (4, 3, 5, 7)]
SMOKE_SHAPES = [(4, 300), (1, 5), (3, 2, 3)]
# T * N > 2**31: pointer offsets must be 64-bit. ~52 GB of GPU memory; run only where it fits.
OVERFLOW_SHAPE = (2, 2**30 + 5)
OVERFLOW_BYTES = 60 * 2**30

Fused = Callable[[Tensor, Tensor, int, float, float, float, bool], tuple[Tensor, Tensor]]


def fused_public(
    x: Tensor, g: Tensor, levels: int, th: float, width: float, decay: float, detach: bool
) -> tuple[Tensor, Tensor]:
    """Spikes and ``dL/dx`` through the public path, ``mlf(..., backend="fused")``."""
    xg = x.detach().requires_grad_()  # no copy: the overflow case is large
    out = mlf(xg, levels, th, width, decay, detach, backend="fused")
    out.backward(g)
    return out.detach(), xg.grad


def fused_triton_interpreter(
    x: Tensor, g: Tensor, levels: int, th: float, width: float, decay: float, detach: bool
) -> tuple[Tensor, Tensor]:
    """The Triton kernels themselves on CPU tensors (needs ``TRITON_INTERPRET=1`` before triton loads)."""
    from ..kernels import triton_mlf

    ths = level_thresholds(levels, th, width)
    flat = x.reshape(x.shape[0], -1).float().contiguous()
    gf = g.reshape(flat.shape).float().contiguous()
    out = triton_mlf.mlf_forward_cuda(flat, ths, decay)
    grad = triton_mlf.mlf_backward_cuda(flat, gf, ths, width, decay, detach)
    return out.reshape(x.shape).to(x.dtype), grad.reshape(x.shape).to(x.dtype)


def parity_cases(device: torch.device, smoke: bool) -> list[dict[str, Any]]:
    """Every K, reset mode and dtype per shape; on CUDA the 64-bit-offset case after the first shape."""
    cases = []
    for i, shape in enumerate(SMOKE_SHAPES if smoke else CUDA_SHAPES):
        large = shape[-1] > 10**5
        for levels in (1, 2, 3, 4):
            for detach in (False, True):
                for dtype in ("float32",) if large else ("float32", "bfloat16"):
                    params = PARAMS[(i + levels) % 2] if not large else PARAMS[0]
                    cases.append({"shape": list(shape), "K": levels, "detach_reset": detach, "dtype": dtype,
                                  "params": list(params)})  # fmt: skip
        if device.type == "cuda" and i == 0:
            cases.append({"shape": list(OVERFLOW_SHAPE), "K": 2, "detach_reset": False, "dtype": "float32",
                          "params": list(PARAMS[0]), "overflow": True})  # fmt: skip
    return cases


def _inputs(case: dict[str, Any], device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, case["dtype"])
    x = torch.randn(case["shape"], generator=gen, device=device) * 1.5
    g = torch.randn(case["shape"], generator=gen, device=device)
    th, width, _ = case["params"]
    edges = []
    for t in level_thresholds(case["K"], th, width):
        v = torch.tensor(t, dtype=torch.float32)
        edges += [v, torch.nextafter(v, v + 1), torch.nextafter(v, v - 1)]
    first = x.view(x.shape[0], -1)[0]
    n = min(len(edges), first.numel())
    first[:n] = torch.stack(edges[:n]).to(device)
    return x.to(dtype), g.to(dtype)


def _compare(spikes: Tensor, grad: Tensor, ref: Tensor, ref_grad: Tensor, dtype: str) -> dict[str, Any]:
    rtol, atol = TOLERANCE[dtype]
    err = (grad.float() - ref_grad).abs()
    return {
        "spikes_equal": bool(torch.equal(spikes.float(), ref)),
        "spike_mismatches": int((spikes.float() != ref).sum()),
        "max_abs_grad_err": float(err.max()) if err.numel() else 0.0,
        "grad_close": bool(torch.allclose(grad.float(), ref_grad, rtol=rtol, atol=atol)),
        "rtol": rtol,
        "atol": atol,
    }


def run_case(case: dict[str, Any], device: torch.device, fused: Fused, seed: int) -> dict[str, Any]:
    """One case: the fused path on the whole input against the reference (on at most 8192 columns of
    the overflow case, whose columns are independent: the first and the last 4096)."""
    t0 = time.perf_counter()
    x, g = _inputs(case, device, seed)
    levels, detach = case["K"], case["detach_reset"]
    th, width, decay = case["params"]
    spikes, grad = fused(x, g, levels, th, width, decay, detach)
    if spikes.dtype != x.dtype or spikes.shape != x.shape or grad.shape != x.shape:
        raise AssertionError(
            f"fused returned {spikes.dtype} {tuple(spikes.shape)} for {x.dtype} {tuple(x.shape)}"
        )
    if case.get("overflow"):
        cols = torch.cat([torch.arange(4096), torch.arange(x.shape[1] - 4096, x.shape[1])]).to(device)
        x, g, spikes, grad = (v.index_select(1, cols) for v in (x, g, spikes, grad))
    xr = x.float().clone().requires_grad_()
    ref = mlf_reference(xr, levels, th, width, decay, detach)
    ref.backward(g.float())
    row = {**case, **_compare(spikes, grad, ref.detach(), xr.grad, case["dtype"])}
    row["passed"] = row["spikes_equal"] and row["grad_close"]
    row["wall_s"] = time.perf_counter() - t0
    return row


def _impls(device: torch.device) -> dict[str, Fused]:
    impls: dict[str, Fused] = {"fused": fused_public}
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        impls["triton_interpreter"] = fused_triton_interpreter
    return impls


def _summary(rows: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
    worst: dict[str, float] = {}
    run = [r for r in rows if "skipped" not in r]
    for r in run:
        key = f"{r['impl']}/{r['dtype']}"
        worst[key] = max(worst.get(key, 0.0), r.get("max_abs_grad_err", 0.0))
    return {
        "cases": len(run),
        "passed": sum(bool(r.get("passed")) for r in run),
        "failed": sum(not r.get("passed") for r in run),
        "skipped_time_budget": skipped,
        "skipped_other": [f"{r['shape']}: {r['skipped']}" for r in rows if "skipped" in r],
        "max_abs_grad_err": worst,
    }


def parity_section(device: torch.device, smoke: bool, budget: Budget, part: Part) -> None:
    """Every case for every implementation; a case that raises is recorded as failed, not fatal."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    part.result = {"cases": rows, "summary": _summary(rows, 0)}
    for impl, fused in _impls(device).items():
        cases = parity_cases(device, smoke)
        if impl == "triton_interpreter":  # the interpreter is slow: fp32, the first shape only
            cases = [c for c in cases if c["dtype"] == "float32" and c["shape"] == cases[0]["shape"]]
        for seed, case in enumerate(cases):
            need = 30.0 if case.get("overflow") else 2.0
            if case.get("overflow") and torch.cuda.mem_get_info(device)[0] < OVERFLOW_BYTES:
                rows.append({**case, "impl": impl, "skipped": "not enough free GPU memory"})
                continue
            if budget.left() < need:
                skipped += 1
                continue
            try:
                rows.append({"impl": impl, **run_case(case, device, fused, seed)})
            except Exception as err:  # recorded; the other cases still run
                rows.append({**case, "impl": impl, "passed": False, "error": f"{type(err).__name__}: {err}"})
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the overflow case's ~50 GB must not stay reserved
            part.result["summary"] = _summary(rows, skipped)
            part.save()
    summary = _summary(rows, skipped)
    part.result["summary"] = summary
    part.status = "failed" if summary["failed"] else ("partial: time budget" if skipped else "ok")
    part.save()
