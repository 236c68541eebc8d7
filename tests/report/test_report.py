"""snn-report: grouping, aggregation, paper matching, files written, errors; one real tiny multirun.

The synthetic runs come from :mod:`fakes` (none of them has a validation split; test_report_val.py
covers those). report.md and report.csv are compared with tests/report/golden/; after an intended
change to the report's layout, regenerate them with ``MLFSNN_UPDATE_GOLDEN=1 python -m pytest
tests/report`` and review the diff.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlfsnn.cli.report import main
from mlfsnn.report import load_paper_results
from report.fakes import PNG_MAGIC, check_golden, config, make_run, read_csv

PLOTS = (
    "accuracy_curves.png",
    "accuracy_vs_depth.png",
    "accuracy_vs_levels.png",
    "firing_rate.png",
    "dormant_ratio.png",
)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    big = {"dataset": "cifar10", "depth": 20, "time_steps": 4, "widths": (64, 128, 256)}
    # Two seeds of the paper's CIFAR10 configuration, and its K=1 ablation.
    make_run(root / "paper/0", config(**big, seed=1), [90.0, 93.0, 92.5], sops=1.5e8, params=4327754)
    make_run(root / "paper/1", config(**big, seed=2), [91.0, 93.4, 92.9], sops=1.7e8, params=4327754)
    make_run(root / "paper/2", config(**big, levels=1), [88.0, 89.5, 89.25], sops=0.9e8, params=4327754)
    (root / "paper/multirun.yaml").write_text("hydra: {}\n")
    # A depth sweep for K=3 and K=1 on digits, one diverged run, one learning-rate variant.
    for i, (levels, depth, accs) in enumerate(
        [(3, 8, [40.0, 60.0, 70.0]), (3, 14, [42.0, 64.0, 72.5]), (3, 20, [41.0, 66.0, 75.0]),
         (1, 8, [30.0, 45.0, 50.0]), (1, 14, [28.0, 44.0, 47.0])]
    ):  # fmt: skip
        status = "non_finite_loss" if i == 4 else "ok"
        make_run(
            root / f"depth/{i}", config(levels=levels, depth=depth), accs, status=status, params=2000 + i
        )
    make_run(root / "depth/10", config(levels=3, depth=14, lr=0.05), [35.0, 55.0, 61.0], params=2001)
    # A crash: no summary.json, the last epoch was not evaluated and its line was cut short, and the
    # Hydra config still holds interpolations (one of them needs a resolver only Hydra registers).
    crashed = root / "crashed"
    make_run(crashed, config(levels=1, depth=20), [20.0, 35.0, None], complete=False)
    hydra_cfg = config(levels=1, depth=20)
    hydra_cfg["name"] = "${dataset.name}-ds${model.depth}-K${neuron.levels}-T${time_steps}"
    hydra_cfg["paths"] = {"data_dir": "${oc.env:MLFSNN_DATA_DIR,data}", "stamp": "${now:%H-%M}"}
    (crashed / ".hydra/config.yaml").write_text(yaml.safe_dump(hydra_cfg, sort_keys=False))
    with open(crashed / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "st')
    return root


def test_report_matches_golden_files(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out)]) == 0
    check_golden(out / "report.md", "report.md")
    check_golden(out / "report.csv", "report.csv")
    printed = capsys.readouterr().out
    assert printed.startswith("| # | dataset | block | K | depth | T | widths | optimizer.lr |")
    assert f"wrote {out / 'report.csv'}" in printed
    assert str(tmp_path) not in (out / "report.md").read_text()  # golden parts hold no absolute paths


def test_rows_aggregate_seeds_and_match_the_paper(runs: Path, tmp_path: Path) -> None:
    main([str(runs), "--out", str(tmp_path / "out")])
    rows = read_csv(tmp_path / "out" / "report.csv")
    key = [(r["dataset"], r["K"], r["depth"], r["optimizer.lr"]) for r in rows]
    assert key == sorted(key, key=lambda k: (k[0], int(k[1]), int(k[2]), float(k[3])))
    paper = [r for r in rows if r["dataset"] == "cifar10" and r["K"] == "3"]
    assert len(paper) == 1
    (row,) = paper
    assert (row["n_runs"], row["seeds"], row["runs"]) == ("2", "1 2", "paper/0 paper/1")
    assert float(row["best_acc_mean"]) == pytest.approx(93.2)
    assert float(row["best_acc_std"]) == pytest.approx(0.28284271, abs=1e-6)  # sample std (n - 1)
    assert float(row["sops_per_sample_mean"]) == pytest.approx(1.6e8)
    assert (row["paper_acc"], row["paper_verified"]) == ("94.25", "false")
    assert all(r["paper_acc"] == "" for r in rows if r is not row)  # K=1 is no paper entry
    crashed = next(r for r in rows if r["runs"] == "crashed")
    # The crash reports from metrics.jsonl: 3 readable epochs, the last evaluated one is epoch 2.
    assert (crashed["n_incomplete"], crashed["epochs_max"], crashed["final_acc_mean"]) == ("1", "3", "35.0")
    assert crashed["best_acc_std"] == "" and crashed["params"] == ""
    md = (tmp_path / "out" / "report.md").read_text()
    assert "94.25 (paper, unverified)" in md
    assert "`crashed` (row " in md and "metrics.jsonl line 4 unreadable" in md


def test_plots_are_valid_pngs(runs: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    out = tmp_path / "out"
    main([str(runs), "--out", str(out)])
    for name in PLOTS:
        path = out / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert imread(path).shape[0] > 100


def test_missing_data_skips_plots(tmp_path: Path) -> None:
    # One run with no evaluated epoch: no curves, no depth sweep, no layer statistics.
    make_run(tmp_path / "run", config(), [None], complete=False)
    out = tmp_path / "out"
    assert main([str(tmp_path / "run"), "--out", str(out)]) == 0
    assert not any((out / name).exists() for name in PLOTS)
    md = (out / "report.md").read_text()
    assert "- test accuracy per epoch: skipped (no evaluated epochs)" in md
    assert (
        "| 1 | digits | ds | 3 | 8 | 2 | 4/8/8 |  | – | – | 50.00 ± – | 1.000 ± – | 1 (1 incomplete) | 1 |  |"
        in md
    )
    assert "`run` (row 1)" in md  # a DIR that is itself a run is labelled by its name


def test_training_error_columns_and_curves(runs: Path, tmp_path: Path) -> None:
    import csv
    import json

    from matplotlib.image import imread

    out = tmp_path / "out"
    main([str(runs), "--out", str(out)])
    with open(out / "report.csv") as f:
        rows = {r["runs"]: r for r in csv.DictReader(f)}
    last = json.loads((runs / "depth/0/metrics.jsonl").read_text().splitlines()[-1])
    assert float(rows["depth/0"]["final_train_acc_mean"]) == pytest.approx(last["train_acc"])
    assert float(rows["depth/0"]["final_train_loss_mean"]) == pytest.approx(last["train_loss"])
    assert "final train (%)" in (out / "report.md").read_text()
    curves, depth = imread(out / "training_curves.png"), imread(out / "accuracy_vs_depth.png")
    assert curves.shape[1] > 1.5 * curves.shape[0]  # two panels: training and test accuracy per epoch
    assert depth.shape[1] > 1.5 * depth.shape[0]  # accuracy and training error against depth


def test_default_out_is_next_to_the_runs(runs: Path) -> None:
    main([str(runs / "paper")])
    assert (runs / "paper" / "report" / "report.csv").is_file()
    main([str(runs / "paper")])  # the report folder is not mistaken for a run
    assert len(read_csv(runs / "paper" / "report" / "report.csv")) == 2


def test_paper_results_are_provenanced_and_unverified() -> None:
    entries = load_paper_results()
    ours = {(e["dataset"], e["depth"], e["levels"], e["time_steps"]): e["test_acc"] for e in entries
            if e["kind"] == "this_paper"}  # fmt: skip
    assert ours == {
        ("cifar10", 20, 3, 4): 94.25,
        ("dvs_gesture", 20, 3, 40): 97.29,
        ("cifar10_dvs", 14, 3, 10): 70.36,
    }
    assert {e["kind"] for e in entries} == {"this_paper", "other_method"}
    assert all(e["verified"] is False and e["source"] for e in entries)
    assert len({e["id"] for e in entries}) == len(entries)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, make: str) -> None:
    target = tmp_path / "nothing"
    if make == "empty":
        (target / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        main([str(target), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _snn_report(*args: str) -> subprocess.CompletedProcess[str]:
    # A fresh process, as the console script runs: nothing the other tests imported leaks in.
    cmd = [sys.executable, "-m", "mlfsnn.cli.report", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_help_exits_0() -> None:
    done = _snn_report("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: snn-report")


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_console_script_user_error_is_one_line(tmp_path: Path, make: str) -> None:
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    done = _snn_report(str(target), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, mlfsnn.report, mlfsnn.cli.report; assert 'matplotlib' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_real_multirun_gives_one_row_per_k(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "mlfsnn.train", "-m", "+experiment=digits", "dataset.subset=64",
           "dataset.size=8", "model.depth=8", "model.widths=[4,8,8]", "time_steps=2", "trainer.epochs=1",
           "trainer.num_workers=0", "trainer.progress=false", "logger.wandb.enabled=false",
           "dataset.val_fraction=0.25", "neuron.levels=1,2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    rows = read_csv(tmp_path / "out" / "report.csv")
    assert [(r["K"], r["runs"], r["n_runs"], r["n_incomplete"]) for r in rows] == [
        ("1", "0", "1", "0"),
        ("2", "1", "1", "0"),
    ]
    assert all(r["best_acc_mean"] and r["params"] for r in rows)
    # the real trainer's validation split reaches the report: the honest column is filled
    assert all(r["test_at_best_val_mean"] and r["best_val_acc_mean"] for r in rows)
    assert "test @ best val" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "accuracy_curves.png").read_bytes()[:8] == PNG_MAGIC
