"""Fused MLF kernel for CUDA, in Triton.

One program owns ``BLOCK`` columns of the ``[T, N]`` input and walks the time axis with all K levels
held as a ``[KP, BLOCK]`` tile (KP = K rounded up to a power of two; padded levels get an infinite
threshold so they never fire and never pass a gradient).

Backward recomputes the potentials into a transient ``[T, KP, N]`` fp32 scratch (freed when the
layer's backward returns) and then runs the BPTT recursion in reverse.

Exact spikes: Triton fuses ``a * b + c`` into an FMA by default; every launch passes
``enable_fp_fusion=False`` so ``(decay * u) * keep + x`` rounds like PyTorch's separate kernels.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as err:  # a CPU-only install; the caller falls back
    triton = None
    _IMPORT_ERROR = f"triton not importable: {err}"

__all__ = ["mlf_backward_cuda", "mlf_forward_cuda", "unavailable_reason"]

_BLOCK = 256


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    if triton is None:
        return _IMPORT_ERROR
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None


if triton is not None:

    @triton.jit
    def _mlf_fwd_kernel(
        x_ptr, out_ptr, th_ptr, T, N, decay, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr
    ):
        cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        lv = tl.arange(0, KP)
        th = tl.load(th_ptr + lv, mask=lv < K, other=float("inf"))[:, None]
        u = tl.zeros([KP, BLOCK], dtype=tl.float32)
        keep = tl.full([KP, BLOCK], 1.0, tl.float32)
        xp = x_ptr + cols
        op = out_ptr + cols
        for _ in range(T):
            xt = tl.load(xp, mask=mask, other=0.0)
            u = decay * u
            u = u * keep
            u = u + xt[None, :]
            fired = u > th
            tl.store(op, tl.sum(fired.to(tl.float32), axis=0), mask=mask)
            keep = tl.where(fired, 0.0, 1.0)
            xp += N
            op += N

    @triton.jit
    def _mlf_bwd_kernel(
        x_ptr,
        g_ptr,
        gx_ptr,
        u_ptr,
        th_ptr,
        T,
        N,
        u_step,
        last_row,
        decay,
        half,
        inv_w,
        K: tl.constexpr,
        KP: tl.constexpr,
        DETACH: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        lv = tl.arange(0, KP)
        th = tl.load(th_ptr + lv, mask=lv < K, other=float("inf"))[:, None]
        mask2 = mask[None, :] & (lv[:, None] < KP)
        up = u_ptr + lv.to(tl.int64)[:, None] * N + cols[None, :]
        xp = x_ptr + cols
        u = tl.zeros([KP, BLOCK], dtype=tl.float32)
        keep = tl.full([KP, BLOCK], 1.0, tl.float32)
        for _ in range(T):  # recompute the potentials, same float order as the forward
            u = decay * u
            u = u * keep
            u = u + tl.load(xp, mask=mask, other=0.0)[None, :]
            tl.store(up, u, mask=mask2)
            keep = tl.where(u > th, 0.0, 1.0)
            xp += N
            up += u_step
        delta = tl.zeros([KP, BLOCK], dtype=tl.float32)
        gp = g_ptr + last_row + cols  # last_row = (T-1)*N from the host: no int32 overflow
        gxp = gx_ptr + last_row + cols
        for _ in range(T):  # dL/do = g - decay*u*delta; delta = h*dL/do + decay*(1-o)*delta
            up -= u_step
            u = tl.load(up, mask=mask2, other=0.0)
            h = tl.where(tl.abs(u - th) < half, inv_w, 0.0)
            keep = tl.where(u > th, 0.0, 1.0)
            g = tl.load(gp, mask=mask, other=0.0)[None, :]
            d_o = g + tl.zeros([KP, BLOCK], dtype=tl.float32) if DETACH else g - decay * u * delta
            delta = d_o * h + decay * keep * delta
            tl.store(gxp, tl.sum(delta, axis=0), mask=mask)
            gp -= N
            gxp -= N


@lru_cache(maxsize=64)
def _level_tensor(ths: tuple[float, ...], device: torch.device) -> Tensor:
    return torch.tensor(ths, dtype=torch.float32, device=device)


def _levels(ths: list[float], device: torch.device) -> tuple[Tensor, int]:
    # Cached: a fresh host-to-device copy per layer call would be a synchronisation point.
    return _level_tensor(tuple(ths), device), triton.next_power_of_2(len(ths))


def mlf_forward_cuda(x: Tensor, ths: list[float], decay: float) -> Tensor:
    """Spike counts of ``x: [T, N]`` (fp32, contiguous)."""
    steps, n = x.shape
    out = torch.empty_like(x)
    th, kp = _levels(ths, x.device)
    grid = (triton.cdiv(n, _BLOCK),)
    _mlf_fwd_kernel[grid](
        x, out, th, steps, n, decay, K=len(ths), KP=kp, BLOCK=_BLOCK, enable_fp_fusion=False
    )
    return out


def mlf_backward_cuda(
    x: Tensor, grad: Tensor, ths: list[float], width: float, decay: float, detach_reset: bool
) -> Tensor:
    """``dL/dx`` from the input and ``dL/ds`` (both ``[T, N]`` fp32 contiguous)."""
    steps, n = x.shape
    th, kp = _levels(ths, x.device)
    scratch = torch.empty((steps, kp, n), dtype=torch.float32, device=x.device)
    grad_x = torch.empty_like(x)
    half = float(torch.tensor(width / 2, dtype=torch.float32))
    inv_w = float(torch.tensor(1.0, dtype=torch.float32) / width)
    grid = (triton.cdiv(n, _BLOCK),)
    _mlf_bwd_kernel[grid](
        x,
        grad,
        grad_x,
        scratch,
        th,
        steps,
        n,
        kp * n,
        (steps - 1) * n,
        decay,
        half,
        inv_w,
        K=len(ths),
        KP=kp,
        DETACH=bool(detach_reset),
        BLOCK=_BLOCK,
        enable_fp_fusion=False,
    )
    return grad_x
