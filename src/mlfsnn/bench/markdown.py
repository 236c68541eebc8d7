"""``bench.md``: the results of one ``snn-bench`` run as Markdown tables."""

from __future__ import annotations

from typing import Any

__all__ = ["neuron_table", "to_markdown", "train_table"]


def _ratio(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.2f}x" if key in row else "-"


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def neuron_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| shape | K | impl | mode | median ms | min ms | speedup vs ref |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(
            f"| {shape} | {r['K']} | {r['impl']} | {r['mode']} | {_fmt_ms(r['median_s'])} | "
            f"{_fmt_ms(r['min_s'])} | {r['speedup_vs_reference']:.1f}x |"
        )
    return lines


def train_table(rows: list[dict[str, Any]], mem: dict[str, int | None]) -> list[str]:
    """``mem``: peak extra bytes of one step by ``net/variant`` (missing or None: n/a)."""
    lines = [
        "| net | T x batch | variant | median s | min s | samples/s | vs ReLU | vs reference | "
        "compile s | vs eager | peak step memory MiB | memory vs reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = mem.get(f"{r['net']}/{r['variant']}")
        peak_s = f"{peak / 2**20:.1f}" if peak is not None else "n/a"
        ref_peak = mem.get(f"{r['net']}/reference")
        mem_ratio = f"{peak / ref_peak:.2f}x" if peak is not None and ref_peak else "-"
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        lines.append(
            f"| {r['net']} | {r['T']} x {r['batch']} | {r['variant']} | {r['median_s']:.4f} | "
            f"{r['min_s']:.4f} | {r['samples_per_s']:.1f} | {_ratio(r, 'vs_relu')} | "
            f"{_ratio(r, 'vs_reference')} | {compile_s} | {_ratio(r, 'vs_eager')} | {peak_s} | {mem_ratio} |"
        )
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    settings = result["settings"]
    lines = [
        "# snn-bench",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch threads: {m['torch_threads']}",
        f"- torch {m['torch']}, Python {m['python']}, "
        f"device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else ""),
        f"- repeats: {settings['repeats']} (median and min; variants timed interleaved)",
    ]
    if "compile" in settings:
        c = settings["compile"]
        lines.append(
            f"- `*_compiled`: `torch.compile(model, backend={c['backend']!r}, fullgraph={c['fullgraph']}, "
            "dynamic=False)`; compile s = first call minus the median step (excluded from the step "
            "times); 2 warm-up steps; vs ReLU compares with the compiled ReLU twin"
        )
    lines.append("")
    if result.get("neuron"):
        lines += ["## MLF neuron", "", *neuron_table(result["neuron"]), ""]
    if result.get("train"):
        lines += ["## Training step (forward + CE + backward + SGD)", ""]
        lines += [*train_table(result["train"], result.get("memory", {})), ""]
    if result.get("contention"):
        from .contention import contention_markdown

        lines += ["## A shared CPU (digits demo step: quiet vs one busy process)", ""]
        lines += [*contention_markdown(result["contention"]), ""]
    if result.get("framing"):
        from .framing import framing_markdown

        lines += ["## Event framing (events/s: mlfsnn's frame_events next to tonic's ToFrame)", ""]
        lines += [*framing_markdown(result["framing"]), ""]
    return "\n".join(lines)
