"""A newcomer's first hour: the launcher off a cluster, --help, README snippets, failed sweep jobs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner_utils import one_line_error

BIN = Path(sys.executable).parent


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine is a SLURM node")
def test_the_slurm_launcher_off_a_cluster_is_one_line(tmp_path: Path) -> None:
    proc = _cli([str(BIN / "snn-train"), "-m", "+experiment=digits", "hydra/launcher=slurm"], tmp_path)
    one_line_error(proc, "hydra/launcher=slurm", "srun", "local_parallel")
    assert not list(tmp_path.iterdir())


def test_a_launcher_without_multirun_is_one_line(tmp_path: Path) -> None:
    proc = _cli([str(BIN / "snn-train"), "+experiment=digits", "hydra/launcher=local_parallel"], tmp_path)
    one_line_error(proc, "hydra/launcher=local_parallel", "-m")
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


@pytest.mark.parametrize("tool", ["train", "eval", "export", "report", "data", "bench"])
def test_help_answers_without_torch_in_plain_text(tool: str) -> None:
    code = (
        "import sys\n"
        f"from mlfsnn.cli.{tool} import main\n"
        f"sys.argv = ['snn-{tool}', '--help']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip().endswith("NO TORCH"), out.stdout[-500:]
    assert "usage" in out.stdout.lower() and "``" not in out.stdout and ":mod:" not in out.stdout


def _repl_snippets() -> list[str]:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith("python\n")]


@pytest.mark.parametrize("snippet", _repl_snippets())
def test_readme_python_snippets_run_pasted_into_the_repl(snippet: str, tmp_path: Path) -> None:
    # `python -i` reads stdin as the interactive prompt does: a compound statement ends only at a
    # blank line, so a snippet that runs as a file can still be a SyntaxError pasted into the REPL.
    proc = subprocess.run(
        [sys.executable, "-i", "-q"],
        input=snippet + "\n",
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr[-3000:]
