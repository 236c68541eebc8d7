"""A regular wheel carries the configs: snn-train composes them from any working directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_configs_and_data_files(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "w"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1:]}")
    wheel = next((tmp_path / "w").glob("mlfsnn-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import mlfsnn, importlib.resources as r\n"
        "from hydra import compose, initialize_config_module\n"
        f"assert mlfsnn.__file__.startswith({str(target)!r}), mlfsnn.__file__\n"
        "with initialize_config_module('mlfsnn.configs', version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['+experiment=dvs_gesture', '+variant=lif_plain'])\n"
        "assert cfg.time_steps == 40 and cfg.neuron.levels == 1 and cfg.model.block == 'plain'\n"
        "assert (r.files('mlfsnn.report') / 'paper_results.yaml').is_file()\n"
        "assert (r.files('mlfsnn.kernels') / 'mlf_kernel.c').is_file()\n"
        "import mlfsnn.cli.train, mlfsnn.cli.eval, mlfsnn.cli.data, mlfsnn.cli.report, mlfsnn.cli.bench\n"
        "import importlib.metadata as md\n"
        "assert md.metadata('mlfsnn')['License-Expression'] == 'MIT'\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
