"""The GPU check (``scripts/gpu_check.sh`` / ``python -m mlfsnn.bench.gpu_check``) on a CPU machine:
the no-CUDA exit, the budget and kill paths, and every section's code at tiny sizes (``--cpu-smoke``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mlfsnn.bench import gpu_check
from mlfsnn.bench.gpu_parity import fused_public, parity_cases, parity_section, run_case
from mlfsnn.bench.gpu_sections import RECIPES, Budget, Part, train_section
from mlfsnn.bench.steps import CompileOptions
from mlfsnn.nn import PAPER_NETS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
TIMED = ["parity", "neuron", "train/dvs_gesture", "train/cifar10", "train/cifar10_dvs"]


def _script(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BIN": str(Path(sys.executable).parent), **env},
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_script_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    proc = _script("out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == gpu_check.NO_CUDA
    assert not (tmp_path / "out").exists()


def test_script_help_and_usage(tmp_path: Path) -> None:
    assert os.access(SCRIPT, os.X_OK)
    proc = _script("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "OUT_DIR" in proc.stdout and "--cpu-smoke" in proc.stdout
    assert _script(cwd=tmp_path).returncode == 2


def _yaml(path: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / path).read_text())


@pytest.mark.parametrize("net", sorted(RECIPES))
def test_recipes_match_the_configs(net: str) -> None:
    from mlfsnn.data.events.dvs_gesture import PAPER_SAMPLES

    exp, data, r = _yaml(f"experiment/{net}.yaml"), _yaml(f"dataset/{net}.yaml"), RECIPES[net]
    assert (r.time_steps, r.batch, r.epochs) == (
        exp["time_steps"],
        exp["trainer"]["batch_size"],
        exp["trainer"]["epochs"],
    )
    assert r.channels == PAPER_NETS[net]["in_channels"]
    assert r.size == exp.get("dataset", {}).get("size", 32)
    assert data["val_fraction"] == 0.0  # the whole training split trains
    samples = {"cifar10": 50000, "dvs_gesture": PAPER_SAMPLES["train"]}
    samples["cifar10_dvs"] = round(10000 * (1 - data.get("test_fraction", 0)))
    assert r.train_samples == samples[net]
    # The check trains in fp32 because the recipes do (gpu_check.PRECISION_NOTE).
    assert _yaml("trainer/default.yaml")["precision"] == "fp32"
    assert "precision" not in exp.get("trainer", {})


def test_out_of_budget_skips_every_timed_section_and_still_reports(tmp_path: Path) -> None:
    assert gpu_check.main(["--out", str(tmp_path), "--cpu-smoke", "--budget-s", "1"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert sections["environment"]["status"] == "ok"
    assert sections["environment"]["result"]["torch"] == torch.__version__
    assert all(sections[name]["status"] == "skipped: time budget" for name in TIMED)
    assert sections["ddp"]["status"] == "skipped: needs 2 GPUs"
    assert sections["projection"] == {**sections["projection"], "status": "ok"}
    assert report["finished_utc"] and report["precision"] == "fp32"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "skipped: time budget" in md and "needs 2 GPUs" in md


def test_a_child_past_its_budget_is_killed_and_its_partial_result_kept(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_check, "GRACE_S", 0.5)
    part = tmp_path / "p.json"
    code = (
        "import json, sys, time; open(sys.argv[1], 'w').write(json.dumps("
        "{'status': None, 'result': {'rows': [1]}, 'error': None})); time.sleep(60)"
    )
    t0 = time.monotonic()
    entry = gpu_check.run_child([sys.executable, "-c", code, str(part)], 1.0, part, tmp_path / "log")
    assert time.monotonic() - t0 < 30
    assert entry["status"].startswith("partial: time budget") and entry["result"] == {"rows": [1]}


def test_a_crashing_child_is_recorded_with_its_log(tmp_path: Path) -> None:
    code = "import sys; print('boom'); sys.exit(3)"
    entry = gpu_check.run_child([sys.executable, "-c", code], 30, tmp_path / "none.json", tmp_path / "log")
    assert entry["status"] == "error" and "exit code 3" in entry["error"] and "boom" in entry["error"]


def test_parity_harness_against_the_cpu_kernel(tmp_path: Path) -> None:
    part = Part(tmp_path / "parity.json")
    parity_section(torch.device("cpu"), True, Budget(time.time() + 300), part)
    summary = json.loads(part.path.read_text())["result"]["summary"]
    assert part.status == "ok", summary
    assert summary["cases"] == len(parity_cases(torch.device("cpu"), True)) == 48
    assert set(summary["max_abs_grad_err"]) == {"fused/float32", "fused/bfloat16"}
    assert summary["max_abs_grad_err"]["fused/float32"] < 1e-5


def test_parity_out_of_time_is_partial(tmp_path: Path) -> None:
    part = Part(tmp_path / "parity.json")
    parity_section(torch.device("cpu"), True, Budget(time.time() + 1), part)  # the 3 s reserve: no case
    summary = json.loads(part.path.read_text())["result"]["summary"]
    assert part.status == "partial: time budget" and summary["skipped_time_budget"] == 48


def test_parity_harness_catches_a_flipped_spike() -> None:
    def broken(x, g, *args):  # type: ignore[no-untyped-def]
        spikes, grad = fused_public(x, g, *args)
        spikes.view(-1)[0] += 1
        return spikes, grad

    case = parity_cases(torch.device("cpu"), True)[0]
    row = run_case(case, torch.device("cpu"), broken, seed=0)
    assert (
        not row["passed"] and not row["spikes_equal"] and row["spike_mismatches"] == 1 and row["grad_close"]
    )


def test_train_section_eager_and_compiled(tmp_path: Path) -> None:
    part = Part(tmp_path / "train.json")
    opts = CompileOptions(backend="eager")  # dynamo only: seconds (the smoke run uses aot_eager)
    train_section(torch.device("cpu"), True, Budget(time.time() + 600), part, "dvs_gesture", opts)
    res = json.loads(part.path.read_text())["result"]
    assert part.status == "ok", res
    assert [r["variant"] for r in res["eager"]] == ["mlf", "relu", "vectorized", "reference"]
    compiled = {r["variant"]: r for r in res["compiled"] if r["compiled"]}
    assert set(compiled) == {"mlf_compiled", "relu_compiled"}
    assert all(r["compile_s"] >= 0 and "vs_eager" in r for r in compiled.values())
    assert res["graph_breaks"]["graph_count"] >= 1


@pytest.mark.slow
@pytest.mark.heavy
def test_cpu_smoke_end_to_end_through_the_script(tmp_path: Path) -> None:
    """Every section in its own process, as on a GPU (about 3 minutes on a loaded 2-core machine)."""
    proc = _script("out", "--cpu-smoke", cwd=tmp_path, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["compile"]["backend"] == "aot_eager"
    statuses = {name: s["status"] for name, s in report["sections"].items()}
    assert statuses == {
        **dict.fromkeys(["environment", *TIMED, "projection"], "ok"),
        "ddp": "skipped: needs 2 GPUs",
    }
    assert {r["net"] for r in report["sections"]["projection"]["result"]["rows"]} == set(RECIPES)
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    for heading in (
        "## Kernel parity",
        "## MLF neuron",
        "## Training step",
        "## Projected training time",
        "## DDP",
    ):
        assert heading in md
    assert "| dvs_gesture | 2 x 2 | mlf_compiled |" in md


@pytest.mark.slow
@pytest.mark.heavy
def test_parity_section_runs_the_triton_kernels_in_the_interpreter(tmp_path: Path) -> None:
    """TRITON_INTERPRET=1: the CUDA kernels' parity cases on CPU tensors, through the check's harness."""
    pytest.importorskip("triton")
    cmd = [sys.executable, "-m", "mlfsnn.bench.gpu_check", "--out", str(tmp_path), "--cpu-smoke"]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, "--sections", "parity"], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    parity = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["parity"]
    rows = [r for r in parity["result"]["cases"] if r["impl"] == "triton_interpreter"]
    assert parity["status"] == "ok" and len(rows) == 8 and all(r["passed"] for r in rows)
