"""Fused MLF kernel for CPU: a small C/OpenMP library compiled at first use and called via ctypes.

Why plain C through ctypes and not ``torch.utils.cpp_extension.load_inline``: ``load_inline`` needs
``ninja`` (not a dependency of this package) and compiles against the torch headers, which takes
about a minute; this file needs only a C compiler and builds in about a second. The library is
cached under ``$MLFSNN_KERNEL_CACHE`` (default ``~/.cache/mlfsnn``), keyed by the source, the flags, the
compiler and the CPU, so ``-march=native`` builds are never shared between different CPUs.

The library links ``libgomp.so.1``; torch has already loaded a library of that soname, so the
dynamic loader reuses it and the kernel shares torch's OpenMP thread pool instead of starting a
second one that would spin against torch's on small machines.

Exact spikes: ``-ffp-contract=off`` stops the compiler from fusing ``(decay * u) * keep + x`` into
an FMA, which would round differently from the reference and flip spikes that sit at a threshold.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "KernelUnavailable",
    "cpu_kernel_info",
    "load_cpu_kernel",
    "mlf_backward_cpu",
    "mlf_forward_cpu",
    "reset_cpu_kernel",
]

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Columns per tile: backward keeps a tile's potentials for all T steps and K levels in cache. */
static int64_t tile_cols(int64_t T, int K) {
    int64_t c = T * K > 0 ? (int64_t)65536 / (T * (int64_t)K) : 256;
    c = c / 16 * 16;
    return c < 16 ? 16 : (c > 256 ? 256 : c);
}

/* One step of one level over m columns; same float order as the reference. */
static void level_step(float *restrict u, const float *restrict up, const float *restrict xt,
                       float *restrict cnt, int64_t m, float th, float decay) {
    for (int64_t j = 0; j < m; ++j) {
        float keep = up[j] > th ? 0.0f : 1.0f;
        float v = decay * up[j];
        v = v * keep;
        v = v + xt[j];
        u[j] = v;
        cnt[j] += v > th ? 1.0f : 0.0f;
    }
}

/* Potentials of a tile for every step into useq[T][K][m]; counts into out (may be NULL). */
static void tile_forward(const float *x, float *out, float *useq, const float *zero, float *cnt,
                         int64_t T, int64_t N, int64_t n0, int64_t m, const float *th, int K,
                         float decay, int rolling) {
    for (int64_t t = 0; t < T; ++t) {
        memset(cnt, 0, (size_t)m * sizeof(float));
        for (int k = 0; k < K; ++k) {
            /* rolling: only two steps are kept (forward only); else the full sequence (backward). */
            int64_t cur = rolling ? (t & 1) : t, prev = rolling ? ((t + 1) & 1) : t - 1;
            float *u = useq + (cur * K + k) * m;
            const float *up = t == 0 ? zero : useq + (prev * K + k) * m;
            level_step(u, up, x + t * N + n0, cnt, m, th[k], decay);
        }
        if (out) memcpy(out + t * N + n0, cnt, (size_t)m * sizeof(float));
    }
}

int mlf_forward(const float *x, float *out, int64_t T, int64_t N, const float *th, int K,
                float decay, int nthreads) {
    int64_t cols = 256, ntiles = (N + cols - 1) / cols;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        float *buf = (float *)calloc((size_t)(2 * K + 2) * cols, sizeof(float));
        if (!buf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < ntiles; ++b) {
            if (!buf) continue;
            int64_t n0 = b * cols, m = N - n0 < cols ? N - n0 : cols;
            tile_forward(x, out, buf, buf + 2 * K * cols, buf + (2 * K + 1) * cols, T, N, n0, m, th, K,
                         decay, 1);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

int mlf_backward(const float *x, const float *g, float *gx, int64_t T, int64_t N, const float *th,
                 int K, float decay, float half, float inv_w, int detach_reset, int nthreads) {
    int64_t cols = tile_cols(T, K), ntiles = (N + cols - 1) / cols;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        float *useq = (float *)malloc((size_t)(T * K + K + 3) * cols * sizeof(float));
        if (!useq) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < ntiles; ++b) {
            if (!useq) continue;
            int64_t n0 = b * cols, m = N - n0 < cols ? N - n0 : cols;
            float *delta = useq + T * K * cols, *zero = delta + K * cols, *gs = zero + cols;
            memset(zero, 0, (size_t)cols * sizeof(float));
            tile_forward(x, NULL, useq, zero, gs, T, N, n0, m, th, K, decay, 0);
            memset(delta, 0, (size_t)K * m * sizeof(float));
            for (int64_t t = T - 1; t >= 0; --t) {
                const float *gt = g + t * N + n0;
                memset(gs, 0, (size_t)m * sizeof(float));
                for (int k = 0; k < K; ++k) {
                    const float *restrict u = useq + (t * K + k) * m;
                    float *restrict d = delta + k * m;
                    float thk = th[k];
                    /* dL/do = g - decay*u*delta (reset path); delta = h*dL/do + decay*(1-o)*delta */
                    for (int64_t j = 0; j < m; ++j) {
                        float h = fabsf(u[j] - thk) < half ? inv_w : 0.0f;
                        float keep = u[j] > thk ? 0.0f : 1.0f;
                        float d_o = detach_reset ? gt[j] : gt[j] - decay * u[j] * d[j];
                        float nd = d_o * h + decay * keep * d[j];
                        d[j] = nd;
                        gs[j] += nd;
                    }
                }
                memcpy(gx + t * N + n0, gs, (size_t)m * sizeof(float));
            }
        }
        free(useq);
    }
    return failed ? -1 : 0;
}
"""

_BASE_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]
# Tried in order: the first set that compiles wins (no -march=native or no OpenMP on odd toolchains).
_FLAG_SETS = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])


class KernelUnavailable(RuntimeError):
    """The CPU kernel could not be built or loaded; the caller falls back to PyTorch."""


def _cache_dir() -> Path:
    root = os.environ.get("MLFSNN_KERNEL_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlfsnn"


def _cpu_signature() -> str:
    """Model and feature flags: a ``-march=native`` build must not be reused on another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _find_compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cc: str, target: Path, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "mlf_kernel.c"
        src.write_text(_SOURCE)
        tmp_lib = Path(tmp) / target.name
        cmd = [cc, *_BASE_FLAGS, *extra, str(src), "-o", str(tmp_lib), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise KernelUnavailable(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp_lib, target)  # atomic: concurrent first uses (DDP ranks) never see half a file


_INFO: dict[str, str] = {}


def _writable_cache_dir() -> Path:
    path = _cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    # Read-only home (some CI runners): a private per-process directory, rebuilt each run (~1 s).
    return Path(tempfile.mkdtemp(prefix="mlfsnn-kernel-"))


@lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | str:
    """The loaded library, or why it could not be built; cached, so a failure is paid for once."""
    if os.environ.get("MLFSNN_DISABLE_CPU_KERNEL"):
        return "disabled by MLFSNN_DISABLE_CPU_KERNEL"
    cc = _find_compiler()
    if cc is None:
        return "no C compiler found (set CC or install gcc/clang)"
    version = _compiler_version(cc)
    cache = _writable_cache_dir()
    errors = []
    for extra in _FLAG_SETS:
        key = hashlib.sha256("\0".join([_SOURCE, *_BASE_FLAGS, *extra, version, _cpu_signature()]).encode())
        target = cache / f"mlf_kernel_{key.hexdigest()[:16]}.so"
        try:
            if not target.exists():
                _build(cc, target, extra)
            lib = ctypes.CDLL(str(target))
        except (OSError, subprocess.SubprocessError, KernelUnavailable) as err:
            errors.append(str(err))
            continue
        i64, f32, i32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
        lib.mlf_forward.argtypes = [ptr, ptr, i64, i64, ptr, i32, f32, i32]
        lib.mlf_backward.argtypes = [ptr, ptr, ptr, i64, i64, ptr, i32, f32, f32, f32, i32, i32]
        lib.mlf_forward.restype = lib.mlf_backward.restype = i32
        _INFO.update(path=str(target), compiler=cc, flags=" ".join(_BASE_FLAGS + extra))
        return lib
    return "could not build the MLF CPU kernel: " + " | ".join(errors)


def load_cpu_kernel() -> ctypes.CDLL:
    """Build (once, cached on disk) and load the kernel library; raise :class:`KernelUnavailable`."""
    lib = _load()
    if isinstance(lib, str):
        raise KernelUnavailable(lib)
    return lib


def reset_cpu_kernel() -> None:
    """Forget the loaded or failed kernel, so the next use looks again (after changing CC, tests)."""
    _load.cache_clear()
    _INFO.clear()


def cpu_kernel_info() -> dict[str, str]:
    """Library path, compiler and flags of the loaded kernel (empty before the first load)."""
    return dict(_INFO)


def _threads(numel: int) -> int:
    # Below ~64k elements a parallel region costs more than it saves.
    return max(1, min(torch.get_num_threads(), numel // 65536 or 1))


def _floats(values: list[float]) -> ctypes.Array:
    return (ctypes.c_float * len(values))(*values)  # double -> float rounds like torch's scalar cast


def _check(rc: int) -> None:
    if rc != 0:
        raise MemoryError("MLF CPU kernel could not allocate its scratch buffers")


def mlf_forward_cpu(x: Tensor, ths: list[float], decay: float) -> Tensor:
    """Spike counts of ``x: [T, N]`` (fp32, contiguous, CPU)."""
    lib = load_cpu_kernel()
    out = torch.empty_like(x)
    steps, n = x.shape
    _check(
        lib.mlf_forward(
            x.data_ptr(), out.data_ptr(), steps, n, _floats(ths), len(ths), decay, _threads(x.numel())
        )
    )
    return out


def mlf_backward_cpu(
    x: Tensor, grad: Tensor, ths: list[float], width: float, decay: float, detach_reset: bool
) -> Tensor:
    """``dL/dx`` from the input ``x`` and ``dL/ds`` (both ``[T, N]`` fp32 contiguous CPU)."""
    lib = load_cpu_kernel()
    grad_x = torch.empty_like(x)
    steps, n = x.shape
    # half and 1/width rounded to fp32 exactly as the reference's tensor ops do.
    half = float(torch.tensor(width / 2, dtype=torch.float32))
    inv_w = float(torch.tensor(1.0, dtype=torch.float32) / width)
    _check(
        lib.mlf_backward(
            x.data_ptr(),
            grad.data_ptr(),
            grad_x.data_ptr(),
            steps,
            n,
            _floats(ths),
            len(ths),
            decay,
            half,
            inv_w,
            int(detach_reset),
            _threads(x.numel()),
        )
    )
    return grad_x
