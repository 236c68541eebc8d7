"""``snn-train dataset=dvs_gesture`` end to end on a synthetic IBM archive (CPU, seconds)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from event_fixtures import gesture_trial, write_gesture

ROWS = [(1, 10_000, 30_000), (5, 40_000, 60_000), (11, 70_000, 90_000), (2, 100_000, 120_000)]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("mlfsnn.train") is None, reason="the runner is not in this checkout"
)
def test_snn_train_on_a_synthetic_dvs_gesture_archive(tmp_path) -> None:
    trials = {
        f"user{u:02d}_{light}": (gesture_trial(ROWS, 7 * u + i), ROWS)
        for u in (1, 2, 26)
        for i, light in enumerate(("led", "natural"))
    }
    write_gesture(tmp_path / "data", trials, archive=True)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mlfsnn.train",
        "dataset=dvs_gesture",
        f"dataset.root={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "time_steps=2",
        "dataset.bin_ms=2",
        "model.depth=8",
        "model.widths=[4,8,8]",
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "logger.wandb.enabled=false",
        "trainer.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["train_samples"], summary["test_samples"]) == (16, 8)
    assert "ibm" in json.dumps(summary)  # the data source is recorded
