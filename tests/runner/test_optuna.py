"""Optuna sweeps: the preset, the checks before the first trial, the objective, and the report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import open_dict

from mlfsnn.cli import train as train_cli
from mlfsnn.cli.report import main as report_main
from mlfsnn.errors import ConfigError
from mlfsnn.runner.config import validate
from mlfsnn.runner.preflight import Preflight
from mlfsnn.runner.schema import check_overrides
from mlfsnn.runner.search_space import check_objective, search_space_jobs

pytest.importorskip("optuna")  # the [optuna] extra

BIN = Path(sys.executable).parent
# The preset on a net and data small enough for a trial of about a second.
TINY = [
    "+experiment=optuna_digits",
    "dataset.subset=96",
    "dataset.size=8",
    "model.widths=[4,8,8]",
    "time_steps=2",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "trainer.progress=false",
    "logger.wandb.enabled=false",
]


def _preflight(tmp_path: Path, overrides: list[str], task_sweeps: tuple[str, ...] = ()) -> None:
    """What the Preflight callback does when ``snn-train -m TINY OVERRIDES TASK_SWEEPS`` starts."""
    with initialize_config_module("mlfsnn.configs", version_base="1.3"):
        cfg = compose("train", [*TINY, f"hydra.sweep.dir={tmp_path}", *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = [*cfg.hydra.overrides.task, *task_sweeps]
        Preflight().on_multirun_start(cfg)


def test_preset_search_space_is_checked_at_every_edge() -> None:
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module("mlfsnn.configs", version_base="1.3"):
        cfg = compose("train", ["+experiment=optuna_digits"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        jobs = search_space_jobs(cfg, loader, ["+experiment=optuna_digits"])
    assert cfg.hydra.sweeper.n_jobs == 1 and cfg.hydra.sweeper.sampler.seed is not None
    # the fixed point, both ends of lr, weight decay and threshold, and the three choices of K
    assert len(jobs) == 1 + 2 + 2 + 2 + 3
    assert {job.neuron.levels for _, job in jobs} == {1, 2, 3}
    assert min(job.optimizer.lr for _, job in jobs) == pytest.approx(0.01)
    for _, job in jobs:
        validate(job)
        check_objective(cfg, job)
        assert job.dataset.val_fraction > 0


@pytest.mark.parametrize(
    ("overrides", "sweeps", "expect"),
    [
        (["dataset.val_fraction=0"], (), "needs a validation split"),
        (["hydra.sweeper.direction=minimize"], (), "expected maximize"),
        ([], ("optimizer.lr=interval(0, 0.1)",), "search-space value optimizer.lr=0"),
        ([], ("model.depth=choice(8, 9)",), "search-space value model.depth=9"),
    ],
)
def test_preflight_refuses_a_search_that_cannot_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    sweeps: tuple[str, ...],
    expect: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _preflight(tmp_path, overrides, sweeps)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expect in err and "nothing was run" in err


def test_preflight_composes_a_preset_choice_in_the_search_space(tmp_path: Path) -> None:
    _preflight(tmp_path, [], ("+variant=choice(mlf_ds, lif_plain)",))


@pytest.mark.parametrize(
    "override",
    [
        "optimizer.lr=tag(log, interval(0.001, 0.1))",
        "neuron.levels=choice(1,3)",
        "neuron.threshold=interval(0.2,0.9)",
    ],
)
def test_search_space_overrides_pass_the_key_check(override: str) -> None:
    check_overrides(["-m", "+experiment=optuna_digits", override, "hydra.sweeper.n_trials=2"])


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("hydra.sweeper.params.optimizer.lr=interval(0.01,0.1)", "'optimizer.lr=interval(0.01,0.1)'"),
        ("hydra.sweeper.params.optimizer.lrr='interval(0.01,0.1)'", "did you mean optimizer.lr"),
        ("~hydra.sweeper.params.neuron.levels", "give it a fixed value: neuron.levels=VALUE"),
    ],
)
def test_search_space_entries_of_hydra_are_one_line_errors(override: str, expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_overrides(["-m", "+experiment=optuna_digits", override])
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_a_diverged_trial_is_a_result_under_optuna(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.core.hydra_config import HydraConfig

    def diverged(cfg: object, run_dir: Path) -> dict:
        (run_dir / "summary.json").write_text(json.dumps({"status": "non_finite_loss", "best_val_acc": None}))
        raise SystemExit(3)

    monkeypatch.setattr(train_cli, "train", diverged)
    with initialize_config_module("mlfsnn.configs", version_base="1.3"):
        optuna = compose("train", TINY, return_hydra_config=True)
        basic = compose("train", ["+experiment=digits"], return_hydra_config=True)
    try:
        HydraConfig.instance().set_config(optuna)
        assert train_cli.objective(train_cli._train(optuna, tmp_path)) == 0.0  # the search goes on
        HydraConfig.instance().set_config(basic)
        with pytest.raises(SystemExit):  # any other sweep stops, as before
            train_cli._train(basic, tmp_path)
    finally:
        HydraConfig.instance().cfg = None  # the other tests run outside Hydra


def test_objective_is_the_validation_accuracy_when_there_is_a_split() -> None:
    assert train_cli.objective({"best_val_acc": 80.0, "best_test_acc": 90.0}) == 80.0
    assert train_cli.objective({"best_test_acc": 90.0}) == 90.0
    assert train_cli.objective({}) is None  # Hydra ignores the return value of an ordinary run


@pytest.mark.slow
def test_two_trial_sweep_and_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep"
    cmd = [str(BIN / "snn-train"), "-m", *TINY, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads((sweep / str(n) / "summary.json").read_text()) for n in (0, 1)]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # the objective Optuna maximised is each trial's best validation accuracy
    best = max(range(2), key=lambda n: summaries[n]["best_val_acc"])
    assert results["best_value"] == pytest.approx(summaries[best]["best_val_acc"])
    assert set(results["best_params"]) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "neuron.threshold",
        "neuron.levels",
    }

    out = tmp_path / "report"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"best trial of sweep (run {best})" in printed
    with open(out / "report.csv") as f:
        assert sorted(r["runs"] for r in csv.DictReader(f)) == ["0", "1"]  # one row per trial
    with open(out / "best_trial.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["run"] == str(best) and float(row["best_val_acc"]) == pytest.approx(results["best_value"])
    assert float(row["optimizer.lr"]) == pytest.approx(results["best_params"]["optimizer.lr"])
    assert "## Optuna: best trial" in (out / "report.md").read_text()
