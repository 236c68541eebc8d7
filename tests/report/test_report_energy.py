"""snn-report's energy column: the ANN/SNN energy ratio of each configuration, mean over seeds.

Built from the library's pieces (no plots drawn), so it runs in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlfsnn.report import build_rows, load_run
from mlfsnn.report.tables import csv_rows, markdown, markdown_table
from report.fakes import config, make_run


def _rows(root: Path) -> tuple[list, list, list]:
    runs = [load_run(path, path.name) for path in sorted(root.iterdir())]
    rows, keys = build_rows(runs, [])
    return rows, keys, runs


def test_energy_ratio_column_in_table_and_csv(tmp_path: Path) -> None:
    make_run(tmp_path / "0", config(seed=1), [50.0, 60.0], sops=1e4, energy_ratio=4.0)
    make_run(tmp_path / "1", config(seed=2), [52.0, 61.0], sops=1e4, energy_ratio=5.0)
    make_run(tmp_path / "2", config(levels=1), [40.0, 45.0], sops=1e4)  # made before the energy keys
    rows, keys, runs = _rows(tmp_path)
    header, _, *lines = markdown_table(rows, keys).splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")]
    table = [dict(zip(cols, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines]
    assert {r["K"]: r["energy ANN/SNN"] for r in table} == {"3": "4.5x", "1": ""}  # mean of two seeds
    head, *body = csv_rows(rows, keys)
    by_k = {r[head.index("K")]: r[head.index("energy_ratio_mean")] for r in body}
    assert float(by_k["3"]) == pytest.approx(4.5) and by_k["1"] == ""
    md = markdown(rows, keys, runs, [], [], ["runs"])
    assert "energy ANN/SNN: the ANN twin's energy per test sample over the SNN's" in md


def test_no_energy_no_column(tmp_path: Path) -> None:
    make_run(tmp_path / "0", config(), [50.0])
    rows, keys, runs = _rows(tmp_path)
    assert "energy" not in markdown(rows, keys, runs, [], [], ["runs"])
    assert "energy_ratio_mean" in csv_rows(rows, keys)[0]  # the CSV's columns are fixed
