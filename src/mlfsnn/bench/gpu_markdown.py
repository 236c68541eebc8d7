"""``gpu_check.md``: the GPU check's JSON as Markdown (written after every section, so partial too)."""

from __future__ import annotations

from typing import Any

from .markdown import neuron_table, train_table

__all__ = ["gpu_check_markdown"]


def _environment(env: dict[str, Any]) -> list[str]:
    keys = ("gpu", "gpu_memory_gib", "gpu_capability", "gpu_count", "torch", "torch_cuda", "cudnn", "triton",
            "python", "cpu", "logical_cpus", "fused_kernel", "tf32", "git", "date_utc")  # fmt: skip
    return [f"- {k}: {env[k]}" for k in keys if k in env]


def _status_table(sections: dict[str, Any]) -> list[str]:
    lines = ["| section | status | wall s | budget s |", "|---|---|---|---|"]
    for name, s in sections.items():
        lines.append(f"| {name} | {s['status']} | {s.get('wall_s', '-')} | {s.get('budget_s', '-')} |")
    return lines


def _parity(res: dict[str, Any]) -> list[str]:
    summ = res.get("summary", {})
    lines = [
        f"{summ.get('cases', 0)} cases: {summ.get('passed', 0)} passed, {summ.get('failed', 0)} failed, "
        f"{summ.get('skipped_time_budget', 0)} skipped (time budget). Spikes must be identical; "
        "gradients allclose (fp32: rtol = atol = 1e-5; bf16 input: rtol 2^-7 against the reference "
        "on `x.float()`).",
        "",
        "| impl / input dtype | max abs grad error |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.3g} |" for k, v in summ.get("max_abs_grad_err", {}).items()]
    lines += [f"- not run: {s}" for s in summ.get("skipped_other", [])]
    bad = [r for r in res.get("cases", []) if not r.get("passed") and "skipped" not in r]
    if bad:
        lines += [
            "",
            "Failed cases:",
            "",
            "| impl | shape | K | detach | dtype | spikes equal | max grad err | error |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in bad:
            lines.append(
                f"| {r['impl']} | {'x'.join(map(str, r['shape']))} | {r['K']} | {r['detach_reset']} | "
                f"{r['dtype']} | {r.get('spikes_equal', '-')} | {r.get('max_abs_grad_err', '-')} | "
                f"{r.get('error', '')[:200]} |"
            )
    return lines


def _train(sections: dict[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = []
    mem: dict[str, int | None] = {}
    notes = []
    for name, s in sections.items():
        if not name.startswith("train/"):
            continue
        res = s.get("result", {})
        rows += res.get("eager", []) + [
            r for r in res.get("compiled", []) if r["variant"].endswith("_compiled")
        ]
        mem.update({k: v["peak_extra_bytes"] for k, v in res.get("memory", {}).items()})
        gb = res.get("graph_breaks")
        if gb:
            notes.append(f"- {name}: dynamo explain of the MLF net: {gb}")
        for key in ("skipped", "compile_errors"):
            if res.get(key):
                notes.append(f"- {name}: {key}: {res[key]}")
    if not rows:
        return ["(no training-step results)"]
    lines = [
        "Eager rows: 5 interleaved repeats. Compiled rows: up to 10, interleaved with the eager MLF and",
        "ReLU nets (those eager rows are not repeated here). Peak step memory: `max_memory_allocated`",
        "over one step minus the allocation before it.",
        "",
        *train_table(rows, mem),
    ]
    return lines + (["", *notes] if notes else [])


def _projection(res: dict[str, Any]) -> list[str]:
    lines = [
        f"Median step x steps per epoch ({res.get('note', '')}; no data loading, evaluation or checkpoints).",
        "",
        "| net | variant | T x batch | train samples | steps/epoch | steps/s | s/epoch | epochs | "
        "recipe hours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res.get("rows", []):
        lines.append(
            f"| {r['net']} | {r['variant']} | {r['T']} x {r['batch']} | {r['train_samples']} | "
            f"{r['steps_per_epoch']} | {r['steps_per_s']:.2f} | {r['epoch_s']:.1f} | {r['epochs']} | "
            f"{r['recipe_h']:.2f} |"
        )
    return lines


def gpu_check_markdown(report: dict[str, Any]) -> str:
    sections = report["sections"]
    lines = [
        "# GPU check",
        "",
        f"- mode: {report['mode']}; budget {report['budget_s']} s; started {report['started_utc']}, "
        f"finished {report['finished_utc'] or '(not finished)'}",
        f"- training precision: {report['precision']} ({report['precision_source']})",
        f"- torch.compile: {report['compile']}, dynamic=False; compile s = first call minus median step",
    ]
    env = sections.get("environment", {}).get("result", {})
    lines += [*_environment(env), "", "## Sections", "", *_status_table(sections), ""]
    for name, s in sections.items():
        if s.get("error"):
            lines += [f"`{name}` error:", "", "```", s["error"].strip()[-1500:], "```", ""]
    if sections.get("parity", {}).get("result"):
        lines += ["## Kernel parity (fused vs mlf_reference)", "", *_parity(sections["parity"]["result"]), ""]
    neuron = sections.get("neuron", {}).get("result", {})
    if neuron.get("rows"):
        lines += [
            "## MLF neuron",
            "",
            f"{neuron['repeats']} interleaved repeats.",
            "",
            *neuron_table(neuron["rows"]),
        ]
        lines.append("")
    if any(n.startswith("train/") for n in sections):
        lines += ["## Training step (forward + CE + backward + SGD)", "", *_train(sections), ""]
    if sections.get("projection", {}).get("result"):
        lines += ["## Projected training time", "", *_projection(sections["projection"]["result"]), ""]
    if "ddp" in sections:
        lines += ["## DDP", "", "Not run: a 2-process DDP smoke needs 2 GPUs; this check runs on one.", ""]
    return "\n".join(lines)
