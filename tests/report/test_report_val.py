"""snn-report with validation splits: the honest "test @ best val" columns next to the paper's
best-test convention, the accuracy-against-depth / against-K / per-layer figures, and reports that
mix runs with and without a split (old runs have none).

report_val.md / report_val.csv in tests/report/golden/ are regenerated like the others (see
:mod:`fakes`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mlfsnn.cli.report import main
from report.fakes import PNG_MAGIC, check_golden, config, make_run, read_csv

FIGURES = ("accuracy_vs_depth.png", "accuracy_vs_levels.png", "dormant_ratio.png")
# The four presets of the variant config group: (K, block) -> base accuracy of the fake runs.
VARIANTS = {(1, "plain"): 50.0, (1, "ds"): 55.0, (3, "plain"): 60.0, (3, "ds"): 70.0}


@pytest.fixture
def val_runs(tmp_path: Path) -> Path:
    """A depth x variant x 2-seed sweep with a val split. Every run peaks on test at epoch 2 but on val
    at epoch 3 (of 4), so the paper's best test (base + 5) and test @ best val (base + 3) differ."""
    root = tmp_path / "sweep"
    job = 0
    for depth in (8, 14):
        for (levels, block), base in VARIANTS.items():
            for seed in (1, 2):
                b = base + (2 if depth == 14 else 0) + seed
                cfg = config(levels=levels, depth=depth, block=block, seed=seed, val_fraction=0.1)
                dormant = 0.3 if levels == 1 else 0.05  # LIF leaves more units dormant
                make_run(
                    root / str(job),
                    cfg,
                    [b, b + 5, b + 3, b + 4],
                    val_accs=[b - 2, b, b + 1, b + 0.5],
                    dormant=dormant,
                )
                job += 1
    return root


def test_val_report_matches_golden_files(val_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([str(val_runs), "--out", str(out)]) == 0
    check_golden(out / "report.md", "report_val.md")
    check_golden(out / "report.csv", "report_val.csv")


def test_val_columns_select_on_val(val_runs: Path, tmp_path: Path) -> None:
    main([str(val_runs), "--out", str(tmp_path / "out")])
    rows = read_csv(tmp_path / "out" / "report.csv")
    assert len(rows) == 8 and all(r["n_runs"] == "2" for r in rows)
    row = next(r for r in rows if (r["K"], r["block"], r["depth"]) == ("3", "ds", "14"))
    # Seeds 1 and 2: base 72 + seed; test @ best val = base + 3, best val = base + 1, best test = base + 5.
    assert float(row["test_at_best_val_mean"]) == pytest.approx(76.5)
    assert float(row["test_at_best_val_std"]) == pytest.approx(math.sqrt(0.5))
    assert row["test_at_best_val_n"] == "2"
    assert float(row["best_val_acc_mean"]) == pytest.approx(74.5)
    assert float(row["best_acc_mean"]) == pytest.approx(78.5)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| test @ best val (%) | best val (%) | best test, paper conv. (%) | final test (%) |" in md
    assert "76.50 ± 0.71 | 74.50 ± 0.71 | 78.50 ± 0.71 | 77.50 ± 0.71 |" in md
    assert "it selects the epoch on the test set itself" in md


def test_val_figures_are_drawn_and_linked(val_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    main([str(val_runs), "--out", str(out)])
    md = (out / "report.md").read_text()
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 8000, name
        assert f"]({name})" in md, name
    assert "![accuracy against depth (test @ best val)](accuracy_vs_depth.png)" in md
    assert "skipped" not in md


def test_sweep_series_and_labels(val_runs: Path) -> None:
    from mlfsnn.report import build_rows, label_runs, load_run
    from mlfsnn.report.plots import _labels, _sweep, short_layer, variant_label

    rows, keys = build_rows([load_run(p, label) for p, label in label_runs([val_runs])], [])
    depth = _sweep(rows, keys, "model.depth", "test_at_best_val")
    labels = _labels([first for first, _ in depth], keys, skip=("model.depth",))
    assert labels == ["LIF (K=1), DS", "MLF (K=3), DS", "LIF (K=1), plain", "MLF (K=3), plain"]
    assert [(x, m) for x, m, _ in depth[0][1]] == [(8, 59.5), (14, 61.5)]  # base 55 + 1.5 + 3, + 2
    assert all(s == pytest.approx(math.sqrt(0.5)) for _, points in depth for _, _, s in points)
    levels = _sweep(rows, keys, "neuron.levels", "test_at_best_val")
    labels = _labels([first for first, _ in levels], keys, skip=("neuron.levels",))
    assert labels == ["DS, depth=8", "DS, depth=14", "plain, depth=8", "plain, depth=14"]
    assert variant_label({"neuron.levels": 2, "model.block": "other"}, []) == "MLF (K=2), other"
    names = ["sn1", "layer1.0.sn2", "layer2.0.shortcut.2", "fc_neuron"]
    assert [short_layer(n) for n in names] == ["stem", "1.0.sn2", "2.0.sc", "fc_neuron"]


def test_single_run_with_val_does_not_crash(tmp_path: Path) -> None:
    make_run(tmp_path / "run", config(val_fraction=0.1), [40.0, 50.0], val_accs=[45.0, 44.0])
    out = tmp_path / "out"
    assert main([str(tmp_path / "run"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # One seed: no std; selection on val picks epoch 1 (test 40) over the test-best epoch 2 (50).
    assert "| 1,000 | 40.00 ± – | 45.00 ± – | 50.00 ± – | 50.00 ± – | 50.00 ± – | 0.500 ± – | 1 |" in md
    assert "- accuracy against depth (test @ best val): skipped (depth does not vary" in md
    assert "- accuracy against K (test @ best val): skipped" in md
    assert (out / "dormant_ratio.png").read_bytes()[:8] == PNG_MAGIC  # one line, no band


def test_mixed_val_and_no_val_runs(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    # An old run (no split, no val_fraction key) and a new seed of the same configuration with a split.
    make_run(root / "old/0", config(levels=3, depth=8, seed=1), [60.0, 65.0])
    make_run(
        root / "new/0", config(levels=3, depth=8, seed=2, val_fraction=0.1), [62.0, 64.0], val_accs=[70, 69]
    )
    make_run(root / "old/1", config(levels=1, depth=8), [50.0, 52.0])  # no val at all
    make_run(root / "new/1", config(levels=1, depth=14, val_fraction=0.1), [51.0, 53.0], val_accs=[60, 61])
    # A crashed run with a split (numbers from metrics.jsonl only) and NaNs where a diverged run has them.
    crashed = config(levels=3, depth=14, val_fraction=0.1)
    make_run(root / "crashed", crashed, [55.0, math.nan], complete=False, val_accs=[58.0, math.nan])
    nan_run = root / "new/1/metrics.jsonl"
    nan_run.write_text(nan_run.read_text().replace('"layer1.0.sn1": 0.12', '"layer1.0.sn1": NaN'))
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out)]) == 0
    rows = {(r["K"], r["depth"]): r for r in read_csv(out / "report.csv")}
    assert (rows["3", "8"]["test_at_best_val_mean"], rows["3", "8"]["test_at_best_val_n"]) == ("62.0", "1")
    assert rows["3", "8"]["best_acc_n"] == "2"
    assert (rows["1", "8"]["test_at_best_val_mean"], rows["1", "8"]["best_val_acc_mean"]) == ("", "")
    assert (rows["1", "14"]["test_at_best_val_mean"], rows["1", "14"]["best_val_acc_mean"]) == (
        "53.0",
        "61.0",
    )
    assert (rows["3", "14"]["test_at_best_val_mean"], rows["3", "14"]["best_val_acc_mean"]) == (
        "55.0",
        "58.0",
    )
    md = (out / "report.md").read_text()
    assert "| 62.00 ± – (n=1) | 70.00 ± – (n=1) | 64.50 ± 0.71 |" in md
    assert "| 1 | digits | ds | 1 | 8 | 2 | 4/8/8 | 1,000 |  |  | 52.00 ± – |" in md
    # Plotted on test @ best val: K=1 has it at one depth only, so only K=3 makes a depth line.
    assert "skipped" not in md
    for name in ("accuracy_vs_depth.png", "accuracy_vs_levels.png", "dormant_ratio.png", "firing_rate.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
