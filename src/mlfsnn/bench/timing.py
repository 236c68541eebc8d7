"""Timing helpers: every variant of one config is timed interleaved, so background load hits all alike."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import kernels

__all__ = ["interleaved", "machine_info", "stats", "sync", "time_call", "wall_call"]


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    reason = kernels.fused_unavailable_reason(device)  # also builds the CPU kernel, outside any timing
    info["fused_kernel"] = reason or (kernels.cpu_kernel_info() if device.type == "cpu" else "triton")
    return info


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for one call; on a GPU, CUDA events after draining the queue, so the time is the GPU
    timeline from the call's first launch to its last kernel's end (idle gaps while Python launches
    included: a launch-bound call is not reported faster than it runs)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)  # earlier work (warm-ups) must not hide this call's launches
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds for one call, the device drained before and after (compile time, first steps)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """``repeats`` timings per function, repeat r of every function before repeat r+1."""
    for _ in range(warmup):  # kernel build, allocator, lazy init, autotuning
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return times


def stats(ts: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "repeats": len(ts)}
