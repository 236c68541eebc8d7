"""The drivers in scripts/ run as documented (tiny sizes)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
TINY = [
    "dataset.subset=64",
    "dataset.size=8",
    "model.widths=[4,8,8]",
    "time_steps=2",
    "trainer.epochs=1",
    "trainer.progress=false",
    "logger.wandb.enabled=false",
]


def _script(name: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BIN": BIN, **env},
    )


def test_reproduce_refuses_an_unknown_preset(tmp_path: Path) -> None:
    proc = _script("reproduce.sh", "cifar_10", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: preset 'cifar_10'") and "cifar10" in proc.stderr
    assert not (tmp_path / "multirun").exists()


def test_reproduce_help(tmp_path: Path) -> None:
    proc = _script("reproduce.sh", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "PRESET" in proc.stdout


@pytest.mark.slow
def test_reproduce_runs_a_sweep_and_its_report(tmp_path: Path) -> None:
    proc = _script("reproduce.sh", "digits_sweep", *TINY, cwd=tmp_path, OUT="sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "sweep" / "report" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # K in {1, 3} x block in {ds, plain}
    assert (tmp_path / "sweep" / "report" / "report.md").is_file()


def test_laptop_reproduction_help(tmp_path: Path) -> None:
    proc = _script("laptop_reproduction.sh", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "depth_digits" in proc.stdout
    assert "ablation_levels_digits" in proc.stdout and "ablation_levels_digits_dvs" in proc.stdout


@pytest.mark.slow
def test_laptop_reproduction_runs_both_sweeps_and_reports(tmp_path: Path) -> None:
    tiny = ["dataset.subset=48", "dataset.size=8", "model.widths=[2,4,4]", "time_steps=1", "trainer.epochs=1"]
    small = ["model.depth=8", "+variant=lif_plain,mlf_ds", "trainer.seed=1"]
    # the presets' own grids are replaced by a tiny one through extra overrides of every swept key
    proc = _script("laptop_reproduction.sh", "out", *tiny, *small, "neuron.levels=1,3", "model.block=ds",
                   cwd=tmp_path, PUBLISH=str(tmp_path / "pub"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ("depth", "levels", "levels_dvs"):
        assert (tmp_path / "pub" / part / "report.csv").is_file()
        assert (tmp_path / "pub" / part / "report.md").is_file()
        assert (tmp_path / "pub" / part / "dormant_readings.csv").is_file()  # snn-eval ran on every run
    assert "total:" in (tmp_path / "pub" / "wall_time.txt").read_text()
