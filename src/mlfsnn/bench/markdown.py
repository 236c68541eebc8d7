"""``bench.md``: the results of one ``snn-bench`` run as Markdown tables."""

from __future__ import annotations

from typing import Any

__all__ = ["to_markdown"]


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
