"""snn-eval's four dormant readings, and snn-report's section, CSV and figure made from them, on real
tiny runs (snn-train, then run_eval: the work behind snn-eval)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from mlfsnn.report import report
from mlfsnn.runner.evaluate import run_eval
from mlfsnn.runner.trainer import train
from runner_utils import TINY, compose_cfg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two configurations (LIF and MLF K=3), each trained for one epoch and evaluated by run_eval."""
    root = tmp_path_factory.mktemp("sweep")
    for i, levels in enumerate((1, 3)):
        train(compose_cfg([*TINY, "trainer.epochs=1", f"neuron.levels={levels}"]), root / str(i))
        run_eval(root / str(i) / "checkpoints" / "best.pt", [])
    return root


def test_eval_json_holds_the_four_readings_of_every_layer(sweep: Path) -> None:
    data = json.loads((sweep / "1" / "eval.json").read_text())
    readings = data["dormant_readings"]
    assert set(readings) == {"unit", "step", "silent", "dead"}
    layers = list(data["dormant_ratio"])
    assert all(list(v) == layers for v in readings.values())  # network order, every layer
    assert readings["unit"] == data["dormant_ratio"]  # the project's definition is the same number
    for layer in layers:
        assert readings["dead"][layer] <= readings["unit"][layer] <= readings["step"][layer]


def test_report_has_the_section_the_csv_and_the_figure(sweep: Path, tmp_path: Path) -> None:
    result = report([sweep], out=tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Dormant units, four readings" in text
    section = text.split("## Dormant units, four readings")[1].split("\n## ")[0]
    assert len(re.findall(r"^\| #\d", section, flags=re.M)) == 2  # one line per configuration
    rows = list(csv.DictReader((tmp_path / "report" / "dormant_readings.csv").open()))
    layers = json.loads((sweep / "0" / "eval.json").read_text())["dormant_ratio"]
    assert len(rows) == 2 * 4 * len(layers)
    lif_dead = {r["layer"]: float(r["mean"]) for r in rows if r["K"] == "1" and r["reading"] == "dead"}
    stored = json.loads((sweep / "0" / "eval.json").read_text())["dormant_readings"]["dead"]
    assert lif_dead == pytest.approx(stored, abs=1e-6)
    png = tmp_path / "report" / "dormant_readings.png"
    assert png in result["written"] and png.read_bytes().startswith(PNG_MAGIC)


def test_readings_made_with_overrides_or_through_a_link_are_left_out(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoints"))
    data = json.loads((copy / "0" / "eval.json").read_text())
    data["overrides"] = ["time_steps=8"]  # another setting: not this run's readings
    (copy / "0" / "eval.json").write_text(json.dumps(data))
    (copy / "1" / "eval.json").unlink()
    (copy / "1" / "eval.json").symlink_to(copy / "0" / "eval.json")
    report([sweep], out=tmp_path / "report")  # an earlier report of the same folder had readings
    report([copy], out=tmp_path / "report")
    assert "Dormant units, four readings" not in (tmp_path / "report" / "report.md").read_text()
    assert not (tmp_path / "report" / "dormant_readings.csv").exists()
    assert not (tmp_path / "report" / "dormant_readings.png").exists()
