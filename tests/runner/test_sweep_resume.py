"""A grid multirun killed at random moments and rerun with trainer.resume=auto, through the basic and
the joblib launchers: it ends with the metrics and report of an uninterrupted sweep, and a rerun of a
finished sweep leaves every file of every point byte for byte as it was."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlfsnn.cli.report import main as report_main
from mlfsnn.cli.sweep import main as sweep_main
from mlfsnn.runner.sweep_status import sweep_status
from runner_utils import TINY, kill_at_random_until_done, kill_when, read_metrics

BIN = Path(sys.executable).parent
GRID = [*TINY, "trainer.epochs=3", "neuron.levels=1,2", "model.depth=8,14", "trainer.resume=auto"]
JOBLIB = ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"]


def _cmd(sweep: str, *extra: str) -> list[str]:
    return [str(BIN / "snn-train"), "-m", *GRID, f"hydra.sweep.dir={sweep}", *extra]


def _until_done(cwd: Path, sweep: str, *extra: str, seed: int) -> int:
    """Kill the sweep once mid-point 1 (after a checkpoint), then at seeded random moments; rerun
    until a run ends by itself. Returns the number of kills."""
    kill_when(_cmd(sweep, *extra), cwd, cwd / sweep / "1" / "checkpoints" / "last.pt")
    states = [p.state for p in sweep_status(cwd / sweep).points]  # what a rerun will do
    assert states[1] == "interrupted" and "running" not in states  # joblib ran point 0 alongside
    return 1 + kill_at_random_until_done(_cmd(sweep, *extra), cwd, seed)


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".mlfsnn.lock"
    }


def _report(cwd: Path, sweep: str) -> list[dict[str, str]]:
    assert report_main([str(cwd / sweep), "--out", str(cwd / f"{sweep}-report")]) == 0
    with open(cwd / f"{sweep}-report" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("wall_time_h")  # the cost differs, the results may not
    return rows


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("straight")
    done = subprocess.run(_cmd("s"), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_killed_grid_continues_to_the_same_results(tmp_path: Path, straight: Path, launcher: str) -> None:
    extra = JOBLIB if launcher == "joblib" else []
    kills = _until_done(tmp_path, "s", *extra, seed=3)
    assert kills >= 1
    for point in range(4):
        assert read_metrics(tmp_path / "s" / str(point)) == read_metrics(straight / "s" / str(point)), point
    assert _report(tmp_path, "s") == _report(straight, "s")
    # a finished sweep run again: nothing to do, every file of every point as it was
    before = {n: _tree(tmp_path / "s" / str(n)) for n in range(4)}
    again = subprocess.run(_cmd("s", *extra), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("already finished") == 4
    assert {n: _tree(tmp_path / "s" / str(n)) for n in range(4)} == before
    # snn-sweep status names each point by the overrides its directory was run with
    for point in sweep_status(tmp_path / "s").points:
        ran = yaml.safe_load((tmp_path / "s" / point.dir / ".hydra" / "overrides.yaml").read_text())
        assert point.state == "done" and set(point.what.split()) <= set(ran), (point, ran)


def test_sweep_status_tells_running_from_interrupted(tmp_path: Path, straight: Path, capsys) -> None:
    import shutil

    shutil.copytree(straight / "s", tmp_path / "s")
    (tmp_path / "s" / "1" / "summary.json").unlink()  # as a SIGKILL after the last epoch leaves it
    shutil.rmtree(tmp_path / "s" / "3")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(tmp_path / "s" / "2" / ".mlfsnn.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sweep_main(["status", str(tmp_path / "s")]) == 0
    finally:
        holder.kill()
    out = capsys.readouterr().out
    assert "1 done, 1 running, 1 interrupted, 1 not started" in out, out
    assert sweep_main(["status", str(tmp_path / "s"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["state"] for p in data["points"]] == ["done", "interrupted", "done", "not started"]
    with pytest.raises(SystemExit) as exc:
        sweep_main(["status", str(tmp_path / "s" / "0")])
    assert exc.value.code == 2 and "no multirun.yaml" in capsys.readouterr().err
