"""``snn-bench``: MLF neuron micro-benchmark and training-step benchmark of the paper's three nets.

Neuron: the naive reference, the vectorised PyTorch path and the fused kernel, forward (no grad)
and forward+backward, for several T and K. Training step (forward, cross-entropy, backward, SGD):
the SNN with its default (fused) neuron against twins whose MLF modules are swapped for ReLU, for
the vectorised path and for the naive reference; the ``*_compiled`` variants are ``torch.compile`` of
the MLF net and of its ReLU twin (compile time reported apart, excluded from the step times). All
variants of one config are timed interleaved in one process (repeat r of every variant before repeat
r+1), so background load hits them alike; median and min of the repeats are reported. Compiled
variants get no memory figure here (the memory child would have to compile again; the GPU check
measures theirs in-process).

``python -m mlfsnn.bench.gpu_check`` (``scripts/gpu_check.sh``) is the one-call check for a CUDA
machine: kernel parity, these benchmarks at the paper's batch sizes, projected epoch times.

Peak memory. CPU: torch's allocations are invisible to ``tracemalloc``, so a child process measures
the resident set: it starts with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then serves every tensor
larger than 64 KiB by mmap and returns it to the OS on free, so RSS follows live tensors instead of a
cached heap), runs one warm-up step, resets the kernel's high-water mark (``/proc/self/clear_refs``)
and reports ``VmHWM - VmRSS`` over one more step: the extra memory a training step needs on top of
model, optimizer state and input. CUDA: the same difference from ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ReportError
from .markdown import to_markdown
from .neuron import IMPLS, neuron_benchmark
from .steps import (
    ALL_VARIANTS,
    COMPILED_VARIANTS,
    VARIANTS,
    CompileOptions,
    make_twin,
    memory_benchmark,
    train_benchmark,
)
from .timing import machine_info

__all__ = [
    "ALL_VARIANTS",
    "COMPILED_VARIANTS",
    "IMPLS",
    "VARIANTS",
    "CompileOptions",
    "machine_info",
    "make_twin",
    "neuron_benchmark",
    "run",
    "to_markdown",
    "train_benchmark",
]

# (net, T, batch, input channels, input size): batches scaled to a 2-core CPU / the paper's on CUDA.
TRAIN_CONFIGS = {
    "cpu": [("dvs_gesture", 40, 4, 2, 32), ("cifar10", 4, 32, 3, 32), ("cifar10_dvs", 10, 8, 2, 42)],
    "cuda": [("dvs_gesture", 40, 28, 2, 32), ("cifar10", 4, 64, 3, 32), ("cifar10_dvs", 10, 32, 2, 42)],
}
QUICK_TRAIN = [("dvs_gesture", 2, 2, 2, 16), ("cifar10", 2, 2, 3, 16), ("cifar10_dvs", 2, 2, 2, 16)]


def run(
    device: torch.device,
    *,
    quick: bool = False,
    repeats: int | None = None,
    variants: list[str] | tuple[str, ...] = VARIANTS,
    nets: list[str] | None = None,
    threads: int = 2,
    neuron: bool = True,
    train: bool = True,
    memory: bool = True,
    contention: bool = False,
    compile_opts: CompileOptions | None = None,
) -> dict[str, Any]:
    """Run the selected benchmarks on ``device`` and return one JSON-ready result.

    ``compile_opts``: how ``*_compiled`` variants (in ``variants``) are compiled.
    """
    repeats = repeats or (1 if quick else 5)
    if quick:
        neuron_cfgs, neuron_shape, train_cfgs = [(4, 3)], (2, 4, 8, 8), QUICK_TRAIN
    else:
        neuron_cfgs = [(4, 3), (10, 3), (40, 1), (40, 3), (40, 4)]
        neuron_shape, train_cfgs = (4, 16, 32, 32), TRAIN_CONFIGS["cuda" if device.type == "cuda" else "cpu"]
    if nets:
        train_cfgs = [c for c in train_cfgs if c[0] in nets]
    settings: dict[str, Any] = {"quick": quick, "repeats": repeats, "variants": list(variants)}
    if any(v in COMPILED_VARIANTS for v in variants):
        opts = compile_opts or CompileOptions()
        settings["compile"] = {"backend": opts.backend, "fullgraph": opts.fullgraph, "mode": opts.mode}
    result: dict[str, Any] = {"machine": machine_info(device), "settings": settings}
    if neuron:
        result["neuron"] = neuron_benchmark(device, neuron_cfgs, neuron_shape, repeats)
    if train:
        result["train"] = train_benchmark(device, train_cfgs, variants, repeats, quick, compile_opts)
        if memory:
            mem_cfgs = train_cfgs[:1] if quick else train_cfgs
            result["memory"] = memory_benchmark(device, mem_cfgs, variants, threads, quick)
    if contention:
        from .contention import contention_benchmark

        result["contention"] = contention_benchmark(repeats=3 if quick else max(repeats, 10))
    return result


def write(result: dict[str, Any], out: Path) -> str:
    """Write ``bench.json`` and ``bench.md`` into ``out``; returns the Markdown.

    Both are written as one set (:func:`mlfsnn.files.write_together`): a link planted at
    either name is replaced, not written through, and a full disk leaves the previous pair intact
    (minutes of benchmarking must not end in a cut JSON). Raises :class:`~mlfsnn.errors.ReportError`
    ``cannot write <file>: <reason>``.
    """
    from ..files import os_reason, write_together

    text = to_markdown(result)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create --out {out}: {exc.strerror or exc}") from exc
    try:
        write_together(
            [(out / "bench.json", json.dumps(result, indent=2).encode()), (out / "bench.md", text.encode())]
        )
    except OSError as exc:
        raise ReportError(f"cannot write {exc.filename}: {os_reason(exc, Path(exc.filename))}") from exc
    return text
