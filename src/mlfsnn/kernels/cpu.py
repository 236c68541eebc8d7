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
from importlib import resources
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
    "tdbn_input_grad_cpu",
    "tdbn_mlf_backward_cpu",
    "tdbn_mlf_forward_cpu",
]

# A real C file shipped as package data: readable, lintable by C tools, and hashed into the cache key.
_SOURCE = (resources.files(__package__) / "mlf_kernel.c").read_text()

# -fno-trapping-math: the kernel never inspects floating-point exception flags, and without it GCC
# keeps ``fabsf(v) < half`` as control flow and leaves the backward loop scalar (3-4x slower on AVX2).
# It changes no result: values and rounding are those of -fno-fast-math.
_BASE_FLAGS = [
    "-O3",
    "-std=c99",
    "-shared",
    "-fPIC",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-trapping-math",
]
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
        bn = [ptr, ptr, ptr, ptr, f32, i64, i64]  # mean, den, gamma, beta, scale, hw, C
        lib.tdbn_mlf_forward.argtypes = [ptr, ptr, i64, i64, ptr, i32, f32, *bn, i32]
        lib.tdbn_mlf_backward.argtypes = [
            ptr,
            ptr,
            ptr,
            i64,
            i64,
            ptr,
            i32,
            f32,
            f32,
            f32,
            i32,
            *bn,
            ptr,
            i32,
        ]
        lib.tdbn_input_grad.argtypes = [ptr, ptr, i64, ptr, ptr, f32, i64, i64, ptr, ptr, ptr, i32]
        lib.tdbn_mlf_forward.restype = lib.tdbn_mlf_backward.restype = i32
        lib.tdbn_input_grad.restype = None
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


def _bn_args(bn: tuple[Tensor, Tensor, Tensor, Tensor, float, int]) -> list:
    """(mean, den, gamma, beta) fp32 contiguous ``[C]`` tensors, scale, hw -> the C arguments."""
    mean, den, gamma, beta, scale, hw = bn
    return [mean.data_ptr(), den.data_ptr(), gamma.data_ptr(), beta.data_ptr(), scale, hw, mean.numel()]


def _bptt_args(
    x: Tensor, grad: Tensor, out: Tensor, ths: list[float], width: float, decay: float, detach_reset: bool
) -> list:
    """The arguments both backward kernels start with (x, dL/ds, output, shape, levels, surrogate)."""
    # half and 1/width rounded to fp32 exactly as the reference's tensor ops do.
    half = float(torch.tensor(width / 2, dtype=torch.float32))
    inv_w = float(torch.tensor(1.0, dtype=torch.float32) / width)
    steps, n = x.shape
    ptrs = [x.data_ptr(), grad.data_ptr(), out.data_ptr()]
    return [*ptrs, steps, n, _floats(ths), len(ths), decay, half, inv_w, int(detach_reset)]


def tdbn_mlf_forward_cpu(x: Tensor, ths: list[float], decay: float, bn: tuple) -> Tensor:
    """Spike counts of tdBN(``x``) without materialising tdBN's output (``x``: ``[T, N]`` fp32)."""
    lib = load_cpu_kernel()
    out = torch.empty_like(x)
    steps, n = x.shape
    _check(
        lib.tdbn_mlf_forward(
            x.data_ptr(),
            out.data_ptr(),
            steps,
            n,
            _floats(ths),
            len(ths),
            decay,
            *_bn_args(bn),
            _threads(x.numel()),
        )
    )
    return out


def tdbn_mlf_backward_cpu(
    x: Tensor, grad: Tensor, ths: list[float], width: float, decay: float, detach_reset: bool, bn: tuple
) -> tuple[Tensor, Tensor]:
    """``dL/dy`` (y: tdBN's output) and the per-channel sums ``[2, C]`` (fp64) of it and of it x z."""
    lib = load_cpu_kernel()
    grad_y = torch.empty_like(x)
    sums = torch.zeros(2, bn[0].numel(), dtype=torch.float64)
    args = _bptt_args(x, grad, grad_y, ths, width, decay, detach_reset)
    _check(lib.tdbn_mlf_backward(*args, *_bn_args(bn), sums.data_ptr(), _threads(x.numel())))
    return grad_y, sums


def tdbn_input_grad_cpu(x: Tensor, grad_y: Tensor, bn: tuple, a: Tensor, b: Tensor, d: Tensor) -> Tensor:
    """``dx = a * (grad_y - b) - z * d`` per channel, in place over ``grad_y`` (returned)."""
    lib = load_cpu_kernel()
    mean, den, _, _, scale, hw = bn
    lib.tdbn_input_grad(
        x.data_ptr(),
        grad_y.data_ptr(),
        x.numel(),
        mean.data_ptr(),
        den.data_ptr(),
        scale,
        hw,
        mean.numel(),
        a.data_ptr(),
        b.data_ptr(),
        d.data_ptr(),
        _threads(x.numel()),
    )
    return grad_y


def mlf_backward_cpu(
    x: Tensor, grad: Tensor, ths: list[float], width: float, decay: float, detach_reset: bool
) -> Tensor:
    """``dL/dx`` from the input ``x`` and ``dL/ds`` (both ``[T, N]`` fp32 contiguous CPU)."""
    lib = load_cpu_kernel()
    grad_x = torch.empty_like(x)
    args = _bptt_args(x, grad, grad_x, ths, width, decay, detach_reset)
    _check(lib.mlf_backward(*args, _threads(x.numel())))
    return grad_x
