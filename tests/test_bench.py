"""``snn-bench`` with compiled training steps (plain ``--quick``: tests/nn/test_kernels.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlfsnn.cli.bench import main

QUICK_TRAIN = ["--quick", "--skip-neuron", "--skip-memory", "--nets", "dvs_gesture"]


def _train_rows(out: Path) -> dict[str, dict]:
    return {r["variant"]: r for r in json.loads((out / "bench.json").read_text())["train"]}


def test_compile_flag_adds_compiled_twins(tmp_path: Path) -> None:
    args = ["--quick", "--skip-neuron", "--nets", "dvs_gesture", "--variants", "mlf", "relu", "--compile"]
    assert main([*args, "--compile-backend", "eager", "--out", str(tmp_path)]) == 0
    rows = _train_rows(tmp_path)
    assert list(rows) == ["mlf", "relu", "mlf_compiled", "relu_compiled"]
    for name in ("mlf_compiled", "relu_compiled"):
        assert rows[name]["compiled"] and rows[name]["compile_s"] >= 0 and "vs_eager" in rows[name]
    assert "vs_relu" in rows["mlf_compiled"] and "vs_relu" not in rows["relu_compiled"]
    # the memory child would have to compile again: compiled variants get no memory figure
    memory = json.loads((tmp_path / "bench.json").read_text())["memory"]
    assert set(memory) == {"dvs_gesture/mlf", "dvs_gesture/relu"}
    md = (tmp_path / "bench.md").read_text()
    assert "| compile s | vs eager |" in md and "| dvs_gesture | 2 x 2 | mlf_compiled |" in md
    assert "backend='eager', fullgraph=False" in md


@pytest.mark.slow
@pytest.mark.heavy
def test_compiled_step_with_inductor_on_cpu(tmp_path: Path) -> None:
    """Inductor on CPU fp32 with layout optimisation off (a channels-last oneDNN backward crashes)."""
    assert main([*QUICK_TRAIN, "--variants", "mlf", "mlf_compiled", "--out", str(tmp_path)]) == 0
    rows = _train_rows(tmp_path)
    assert rows["mlf_compiled"]["compile_s"] > 0 and rows["mlf_compiled"]["median_s"] > 0
