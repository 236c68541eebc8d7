"""A newcomer's first hour: the launcher off a cluster, --help, README snippets, failed sweep jobs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine is a SLURM node")
def test_the_slurm_launcher_off_a_cluster_is_one_line(tmp_path: Path) -> None:
    proc = _cli([str(BIN / "snn-train"), "-m", "+experiment=digits", "hydra/launcher=slurm"], tmp_path)
    _one_line_error(proc, "hydra/launcher=slurm", "srun", "local_parallel")
    assert not list(tmp_path.iterdir())


def test_a_launcher_without_multirun_is_one_line(tmp_path: Path) -> None:
    proc = _cli([str(BIN / "snn-train"), "+experiment=digits", "hydra/launcher=local_parallel"], tmp_path)
    _one_line_error(proc, "hydra/launcher=local_parallel", "-m")
    assert not list(tmp_path.iterdir())


def test_a_crashed_sweep_job_is_reported_as_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlfsnn.runner.loop as loop_module
    from mlfsnn.cli.report import main as report_main
    from mlfsnn.runner.trainer import train
    from runner_utils import TINY, compose_cfg

    one = [*TINY, "trainer.epochs=1"]
    assert train(compose_cfg([*one, "trainer.seed=1"]), tmp_path / "sweep" / "0")["status"] == "ok"

    def crash(*_, **__):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(loop_module, "_flush", crash)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        train(compose_cfg([*one, "trainer.seed=2"]), tmp_path / "sweep" / "1")
    monkeypatch.undo()
    summary = json.loads((tmp_path / "sweep" / "1" / "summary.json").read_text())
    assert summary["status"] == "failed" and "illegal memory access" in summary["error"]
    assert report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    problems = text.split("## Incomplete and failed runs", 1)[1]
    assert "status failed (RuntimeError: CUDA error: an illegal memory access" in problems
