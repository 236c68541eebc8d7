"""``snn-bench``: MLF neuron micro-benchmark and training-step benchmark of the paper's three nets.

Neuron: the naive reference, the vectorised PyTorch path and the fused kernel, forward (no grad)
and forward+backward, for several T and K. Training step (forward, cross-entropy, backward, SGD):
the SNN with its default (fused) neuron against twins whose MLF modules are swapped for ReLU, for
the vectorised path and for the naive reference. All variants of one config are timed interleaved in
one process (repeat r of every variant before repeat r+1), so background load hits them alike;
median and min of the repeats are reported.

Peak memory. CPU: torch's allocations are invisible to ``tracemalloc``, so a child process measures
the resident set: it starts with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then serves every tensor
larger than 64 KiB by mmap and returns it to the OS on free, so RSS follows live tensors instead of a
cached heap), runs one warm-up step, resets the kernel's high-water mark (``/proc/self/clear_refs``)
and reports ``VmHWM - VmRSS`` over one more step: the extra memory a training step needs on top of
model, optimizer state and input. CUDA: the same difference from ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import kernels
from .neurons import MLF, mlf
from .resnet import create_model

__all__ = ["machine_info", "main", "make_twin", "neuron_benchmark", "run_bench", "train_benchmark"]

IMPLS = ("reference", "vectorized", "fused")
VARIANTS = ("mlf", "relu", "vectorized", "reference")
# (net, T, batch, input channels, input size): batches scaled to a 2-core CPU / the paper's on CUDA.
TRAIN_CONFIGS = {
    "cpu": [("dvs_gesture", 40, 4, 2, 32), ("cifar10", 4, 32, 3, 32), ("cifar10_dvs", 10, 8, 2, 42)],
    "cuda": [("dvs_gesture", 40, 28, 2, 32), ("cifar10", 4, 64, 3, 32), ("cifar10_dvs", 10, 32, 2, 42)],
}
QUICK_TRAIN = [("dvs_gesture", 2, 2, 2, 16), ("cifar10", 2, 2, 3, 16), ("cifar10_dvs", 2, 2, 2, 16)]
QUICK_OVERRIDES = {"depth": 8, "widths": (4, 8, 16)}


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


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for one call; CUDA events on a GPU so only device time after a sync counts."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up: kernel build, allocator, lazy init
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time(fn, device))
    return times


def _stats(ts: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "repeats": len(ts)}


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
            times = _interleaved({impl: calls[impl][mode] for impl in IMPLS}, repeats, device)
            ref = statistics.median(times["reference"])
            for impl in IMPLS:
                row = {"T": steps, "K": levels, "shape": [steps, *shape], "impl": impl, "mode": mode}
                row.update(_stats(times[impl]))
                row["speedup_vs_reference"] = ref / row["median_s"]
                rows.append(row)
    return rows


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
        times = _interleaved(fns, repeats, device)
        medians = {v: statistics.median(ts) for v, ts in times.items()}
        for variant in variants:
            row = {"net": cfg[0], "T": cfg[1], "batch": cfg[2], "input": [cfg[3], cfg[4], cfg[4]]}
            row.update(variant=variant, **_stats(times[variant]))
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


def _memory_child(spec: dict[str, Any]) -> None:
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
                torch.cuda.reset_peak_memory_stats(device)
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
    code = "import json, sys; from mlfsnn.bench import _memory_child; _memory_child(json.loads(sys.argv[1]))"
    cmd = [sys.executable, "-c", code, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        print(f"memory benchmark failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.2f}x" if key in row else "-"


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# snn-bench",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch threads: {m['torch_threads']}",
        f"- torch {m['torch']}, Python {m['python']}, "
        f"device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else ""),
        f"- repeats: {result['settings']['repeats']} (median and min; variants timed interleaved)",
        "",
    ]
    if result.get("neuron"):
        lines += [
            "## MLF neuron",
            "",
            "| shape | K | impl | mode | median ms | min ms | speedup vs ref |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["neuron"]:
            shape = "x".join(map(str, r["shape"]))
            lines.append(
                f"| {shape} | {r['K']} | {r['impl']} | {r['mode']} | {_fmt_ms(r['median_s'])} | "
                f"{_fmt_ms(r['min_s'])} | {r['speedup_vs_reference']:.1f}x |"
            )
        lines.append("")
    if result.get("train"):
        lines += [
            "## Training step (forward + CE + backward + SGD)",
            "",
            "| net | T x batch | variant | median s | min s | samples/s | vs ReLU | vs reference | "
            "peak step memory MiB | memory vs reference |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        mem = result.get("memory", {})
        for r in result["train"]:
            peak = mem.get(f"{r['net']}/{r['variant']}")
            peak_s = f"{peak / 2**20:.1f}" if peak is not None else "n/a"
            ref_peak = mem.get(f"{r['net']}/reference")
            mem_ratio = f"{peak / ref_peak:.2f}x" if peak is not None and ref_peak else "-"
            lines.append(
                f"| {r['net']} | {r['T']} x {r['batch']} | {r['variant']} | {r['median_s']:.3f} | "
                f"{r['min_s']:.3f} | {r['samples_per_s']:.1f} | {_ratio(r, 'vs_relu')} | "
                f"{_ratio(r, 'vs_reference')} | {peak_s} | {mem_ratio} |"
            )
        lines.append("")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="snn-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat, memory of the first net only")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for bench.json and bench.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 1)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--nets", nargs="+", default=None, help="subset of dvs_gesture cifar10 cifar10_dvs")
    p.add_argument("--skip-neuron", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``snn-bench``; writes ``bench.json`` and ``bench.md`` to ``--out``."""
    run_bench(argv)
    return 0


def run_bench(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` like the command line, run, write the reports and return the results."""
    args = _parse(argv)
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        result = _run(args, device)
    finally:
        torch.set_num_threads(threads)  # called in-process (tests): leave the caller's setting alone
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2))
    text = to_markdown(result)
    (args.out / "bench.md").write_text(text)
    print(text)
    return result


def _run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    repeats = args.repeats or (1 if args.quick else 5)
    if args.quick:
        neuron_cfgs, neuron_shape, train_cfgs = [(4, 3)], (2, 4, 8, 8), QUICK_TRAIN
    else:
        neuron_cfgs = [(4, 3), (10, 3), (40, 1), (40, 3), (40, 4)]
        neuron_shape, train_cfgs = (4, 16, 32, 32), TRAIN_CONFIGS["cuda" if device.type == "cuda" else "cpu"]
    if args.nets:
        train_cfgs = [c for c in train_cfgs if c[0] in args.nets]
    settings = {"quick": args.quick, "repeats": repeats, "variants": args.variants}
    result: dict[str, Any] = {"machine": machine_info(device), "settings": settings}
    if not args.skip_neuron:
        result["neuron"] = neuron_benchmark(device, neuron_cfgs, neuron_shape, repeats)
    if not args.skip_train:
        result["train"] = train_benchmark(device, train_cfgs, args.variants, repeats, args.quick)
        if not args.skip_memory:
            mem_cfgs = train_cfgs[:1] if args.quick else train_cfgs
            result["memory"] = memory_benchmark(device, mem_cfgs, args.variants, args.threads, args.quick)
    return result


if __name__ == "__main__":
    sys.exit(main())
