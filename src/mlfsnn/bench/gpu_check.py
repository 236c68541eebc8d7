"""One-call check of a CUDA machine: kernel parity, benchmarks at the paper's sizes, projected epochs.

    python -m mlfsnn.bench.gpu_check --out OUT          # (scripts/gpu_check.sh OUT) <= 8 min on one GPU
    python -m mlfsnn.bench.gpu_check --out OUT --cpu-smoke   # every code path on CPU, tiny sizes

Writes ``gpu_check.json`` and ``gpu_check.md`` into OUT after every section, so a run killed midway
leaves what it finished; each section's output goes to ``OUT/logs/<section>.log``. Sections:
environment; parity (fused Triton kernel vs ``mlf_reference``); neuron (fwd and fwd+bwd per
implementation); train/<net> (one training step of each paper net at its batch size, eager and
``torch.compile``d, against its ReLU twin, with peak memory); projection (epoch and recipe times from
the measured steps on synthetic data of the real shapes); ddp (needs 2 GPUs: skipped).

Every timed section runs in its own process under a time budget: it skips what cannot finish, is
killed (with its process group) at budget + grace, and a crash or CUDA error there costs only that
section. Exit status 1 when a section failed or raised, else 0; without CUDA (and without
``--cpu-smoke``) it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, ensure_dir

NO_CUDA = "gpu_check: no CUDA device here; nothing to do"
TOTAL_BUDGET_S = 470.0  # 7 min 50 s: the whole run, on top of which come only the machine's start
GRACE_S = 10.0  # a section past budget + grace is killed
MIN_SECTION_S = 15.0  # less left than this: the section is skipped
NETS = ("dvs_gesture", "cifar10", "cifar10_dvs")
# (section, budget on CUDA in s, budget with --cpu-smoke); the train budgets cover a cold compile.
SECTIONS = [("parity", 60, 120), ("neuron", 35, 60)] + [(f"train/{net}", 120, 180) for net in NETS]
PRECISION_NOTE = "configs/trainer/default.yaml: trainer.precision = fp32; no paper recipe overrides it"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlfsnn.bench.gpu_check", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json / gpu_check.md")
    p.add_argument("--cpu-smoke", "--dry-run", action="store_true", help="all sections on CPU, tiny sizes")
    p.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="the whole run's time budget")
    names = [name for name, _, _ in SECTIONS]
    p.add_argument("--sections", nargs="+", default=None, choices=names, metavar="NAME", help=" ".join(names))
    p.add_argument("--fullgraph", action="store_true", help="torch.compile(fullgraph=True)")
    p.add_argument("--compile-backend", default=None, help="default: inductor (aot_eager with --cpu-smoke)")
    p.add_argument("--autocast", choices=("bfloat16",), default=None, help="default: none (recipes: fp32)")
    # Internal: one section in this process (started by the parent run).
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    return p


def _compile_opts(args: argparse.Namespace) -> Any:
    from .steps import CompileOptions

    backend = args.compile_backend or ("aot_eager" if args.cpu_smoke else "inductor")
    return CompileOptions(fullgraph=args.fullgraph, backend=backend)


def _child(args: argparse.Namespace) -> int:
    """Run one section here and leave its result in ``--child-out`` (whatever happens)."""
    import torch

    from .gpu_sections import Budget, Part, neuron_section, train_section

    part = Part(args.child_out)
    budget = Budget(args.child_deadline)
    try:
        device = torch.device("cpu" if args.cpu_smoke else "cuda")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the trainer (runner/context.py) sets it
        else:
            torch.set_num_threads(min(2, torch.get_num_threads()))
        if args.child == "parity":
            from .gpu_parity import parity_section

            parity_section(device, args.cpu_smoke, budget, part)
        elif args.child == "neuron":
            neuron_section(device, args.cpu_smoke, budget, part)
        else:
            net = args.child.removeprefix("train/")
            train_section(device, args.cpu_smoke, budget, part, net, _compile_opts(args), args.autocast)
    except Exception:
        part.status, part.error = "error", traceback.format_exc()[-4000:]
    part.save()
    return 0


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the child and its compile workers only
        os.killpg(proc.pid, signal.SIGKILL)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_child(cmd: list[str], budget: float, part_file: Path, log: Path) -> dict[str, Any]:
    """Run ``cmd`` in its own process group; kill the group at ``budget + GRACE_S``. Returns the
    section entry: the child's own record, or what it left before it was killed or crashed."""
    t0 = time.monotonic()
    part_file.unlink(missing_ok=True)  # a previous run's record must not pass for this one's
    log.unlink(missing_ok=True)  # and "x" (O_EXCL) never opens through a link planted at the name
    with open(log, "xb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        killed = False
        try:
            rc = proc.wait(timeout=budget + GRACE_S)
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(proc)
            rc = proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM (see _terminate): no orphan left on the GPU
            _kill_group(proc)
            raise
    entry: dict[str, Any] = {"status": None, "result": {}, "error": None}
    if part_file.is_file():
        entry.update(json.loads(part_file.read_text()))
    if killed:
        entry["status"] = f"partial: time budget (killed after {budget + GRACE_S:.0f} s)"
    elif entry["status"] is None or rc != 0:
        entry["status"] = "error"
        entry["error"] = (entry["error"] or "") + f"\nexit code {rc}; log tail:\n{_log_tail(log)}"
    entry["wall_s"] = round(time.monotonic() - t0, 1)
    entry["budget_s"] = budget
    return entry


def environment(smoke: bool) -> dict[str, Any]:
    import torch

    from .timing import machine_info

    info = machine_info(torch.device("cpu" if smoke else "cuda"))
    info["date_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info["torch_cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if not smoke:
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_count"] = torch.cuda.device_count()
    info["tf32"] = {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_conv": torch.backends.cudnn.allow_tf32,
    }
    info["git"] = _git()
    return info


def _git() -> str | None:
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def projection(sections: dict[str, Any], smoke: bool) -> dict[str, Any]:
    """Seconds per epoch and hours per recipe from the measured median step (training steps only: no
    data loading, no evaluation, no checkpoints). A last partial batch is counted as a full step."""
    from .gpu_sections import RECIPES

    rows = []
    for net, recipe in RECIPES.items():
        res = sections.get(f"train/{net}", {}).get("result", {})
        eager = [r for r in res.get("eager", []) if r["variant"] in ("mlf", "relu")]
        for r in eager + [r for r in res.get("compiled", []) if r["compiled"]]:
            steps = math.ceil(recipe.train_samples / r["batch"])
            epoch_s = steps * r["median_s"]
            rows.append({
                "net": net, "variant": r["variant"], "batch": r["batch"], "T": r["T"],
                "train_samples": recipe.train_samples, "steps_per_epoch": steps, "epochs": recipe.epochs,
                "steps_per_s": 1.0 / r["median_s"], "epoch_s": epoch_s,
                "recipe_h": epoch_s * recipe.epochs / 3600,
            })  # fmt: skip
    note = "smoke sizes: not a projection of anything" if smoke else "synthetic data of the recipes' shapes"
    return {"rows": rows, "note": note}


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        entry = {"status": "ok", "result": fn(), "error": None}
    except Exception:
        entry = {"status": "error", "result": {}, "error": traceback.format_exc()[-4000:]}
    entry["wall_s"] = round(time.monotonic() - t0, 1)
    return entry


def _write(report: dict[str, Any], out: Path) -> None:
    from .gpu_markdown import gpu_check_markdown

    # Rewritten after every section, so a run killed midway leaves a whole pair; atomic_write also
    # replaces a link planted at either name instead of writing through it.
    for name, text in (("gpu_check.json", json.dumps(report, indent=1, default=str)),
                       ("gpu_check.md", gpu_check_markdown(report))):  # fmt: skip
        atomic_write_text(out / name, text)


def _section_cmd(name: str, args: argparse.Namespace, budget: float, part_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mlfsnn.bench.gpu_check", "--out", str(args.out), "--child", name]
    cmd += ["--child-out", str(part_file), "--child-deadline", f"{time.time() + budget:.1f}"]
    cmd += ["--cpu-smoke"] * args.cpu_smoke + ["--fullgraph"] * args.fullgraph
    cmd += ["--compile-backend", args.compile_backend] if args.compile_backend else []
    return cmd + (["--autocast", args.autocast] if args.autocast else [])


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """The parent: environment here, each timed section in a child, the report after every section."""
    previous = signal.signal(signal.SIGTERM, _terminate)  # killed from outside: end the section too
    try:
        return _run_sections(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_sections(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_dir(args.out / "logs")  # a linked logs folder would put the section logs elsewhere
    sections: dict[str, Any] = {}
    report = {
        "mode": "cpu-smoke" if args.cpu_smoke else "cuda",
        "budget_s": args.budget_s,
        "precision": args.autocast or "fp32",
        "precision_source": PRECISION_NOTE,
        "compile": vars(_compile_opts(args)),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished_utc": None,
        "sections": sections,
    }
    sections["environment"] = _guarded(lambda: environment(args.cpu_smoke))
    _write(report, args.out)
    for name, cuda_budget, smoke_budget in SECTIONS:
        if args.sections and name not in args.sections:
            continue
        left = args.budget_s - (time.monotonic() - start) - GRACE_S
        budget = min(smoke_budget if args.cpu_smoke else cuda_budget, left)
        if budget < MIN_SECTION_S:
            sections[name] = {"status": "skipped: time budget", "result": {}, "error": None}
        else:
            safe = name.replace("/", "_")
            part_file = args.out / "logs" / f"{safe}.part.json"
            cmd = _section_cmd(name, args, budget, part_file)
            sections[name] = run_child(cmd, budget, part_file, args.out / "logs" / f"{safe}.log")
        _write(report, args.out)
    sections["projection"] = _guarded(lambda: projection(sections, args.cpu_smoke))
    sections["ddp"] = {"status": "skipped: needs 2 GPUs", "result": {}, "error": None}
    report["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["wall_s"] = round(time.monotonic() - start, 1)
    _write(report, args.out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    report = run_check(args)
    bad = {n: s["status"] for n, s in report["sections"].items() if s["status"] in ("failed", "error")}
    print(
        f"gpu_check: {args.out / 'gpu_check.md'} ({report['wall_s']} s)" + (f"; FAILED: {bad}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
