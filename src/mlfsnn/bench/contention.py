"""Training steps on a shared CPU: quiet against one busy process, per OpenMP wait policy and threads.

A laptop always runs something else and a cluster node often runs several jobs. libgomp's threads
spin-wait at the end of every parallel region (``OMP_WAIT_POLICY`` unset: ``active`` for a while);
when a core is taken by another process, the spinning thread and the thread it waits for fight for
it, and a step can take several times as long. This benchmark measures that, for the digits demo's
net (DS-ResNet-8, 16/32/64, T=4, batch 32, 16x16) and its ReLU twin, in fresh processes (the wait
policy is read once, when torch loads OpenMP):

* ``quiet``: nothing else runs;
* ``busy``: one other process spins on one core for the whole measurement (``while True: pass``).

Each cell is the median of ``repeats`` steps after a warm-up, the MLF net and its twin interleaved.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["DIGITS", "POLICIES", "child", "contention_benchmark", "contention_markdown"]

# (net, T, batch, input channels, input size): the digits demo's step
DIGITS = {
    "depth": 8,
    "widths": (16, 32, 64),
    "in_channels": 1,
    "num_classes": 10,
    "T": 4,
    "batch": 32,
    "size": 16,
}
POLICIES = ("unset", "passive")  # unset: libgomp's default (spin, then sleep)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the steps in this process (run by :func:`_run_child` in a fresh interpreter)."""
    import torch
    from torch import nn

    from ..nn import spiking_resnet
    from .steps import make_twin
    from .timing import interleaved

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    d = DIGITS
    base = spiking_resnet(d["depth"], d["widths"], d["in_channels"], d["num_classes"])
    x = torch.randn(d["T"], d["batch"], d["in_channels"], d["size"], d["size"])
    y = torch.randint(0, d["num_classes"], (d["batch"],))
    fns = {}
    for variant in ("mlf", "relu"):
        model = make_twin(base, variant).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        fns[variant] = step
    times = interleaved(fns, spec["repeats"], torch.device("cpu"), warmup=2)
    return {v: statistics.median(ts) for v, ts in times.items()}


def _run_child(policy: str, threads: int, repeats: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy.upper()
    env["MLFSNN_NO_THREAD_DEFAULTS"] = "1"  # measure the policy given here, not the CLI's default
    spec = json.dumps({"threads": threads, "repeats": repeats})
    code = f"import json; from mlfsnn.bench.contention import child; print(json.dumps(child({spec})))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"contention child failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def contention_benchmark(
    repeats: int = 10, threads: Sequence[int] = (2, 1), policies: Sequence[str] = POLICIES
) -> list[dict[str, Any]]:
    """One row per (policy, threads, load): median seconds per step of the MLF net and its ReLU twin."""
    rows = []
    for policy in policies:
        for n in threads:
            for load in ("quiet", "busy"):
                hog = None
                if load == "busy":
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    time.sleep(0.5)
                try:
                    medians = _run_child(policy, n, repeats)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                rows.append(
                    {
                        "policy": policy,
                        "threads": n,
                        "load": load,
                        **{f"{k}_s": v for k, v in medians.items()},
                    }
                )
    for row in rows:  # the slowdown against the same setting on a quiet machine
        quiet = next(
            r
            for r in rows
            if r["load"] == "quiet" and r["policy"] == row["policy"] and r["threads"] == row["threads"]
        )
        for v in ("mlf", "relu"):
            row[f"{v}_vs_quiet"] = row[f"{v}_s"] / quiet[f"{v}_s"]
    return rows


def contention_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| OMP_WAIT_POLICY | threads | load | MLF step (ms) | vs quiet | ReLU twin step (ms) | vs quiet |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['threads']} | {r['load']} "
            f"| {r['mlf_s'] * 1e3:.1f} | {r['mlf_vs_quiet']:.2f}x "
            f"| {r['relu_s'] * 1e3:.1f} | {r['relu_vs_quiet']:.2f}x |"
        )
    return lines
