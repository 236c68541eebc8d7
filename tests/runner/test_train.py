"""The runner end to end on tiny configs: outputs, resume, determinism, errors, snn-eval."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mlfsnn.runner.loop as loop_module
from mlfsnn.errors import ConfigError
from mlfsnn.runner.checkpoint import CheckpointError, load_checkpoint
from mlfsnn.runner.evaluate import run_eval
from mlfsnn.runner.trainer import train
from runner_utils import TINY, compose_cfg, read_metrics

BIN = Path(sys.executable).parent


def _run(tmp: Path, *extra: str) -> dict:
    return train(compose_cfg([*TINY, *extra]), tmp)


def test_outputs_follow_the_run_directory_contract(tmp_path: Path) -> None:
    summary = _run(tmp_path)
    rows = read_metrics(tmp_path, drop_timing=False)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        for key in (
            "train_loss",
            "train_acc",
            "test_loss",
            "test_acc",
            "lr",
            "epoch_time_s",
            "train_samples_per_s",
            "firing_rate",
            "dormant_ratio",
        ):
            assert key in row, key
        assert 0 <= row["test_acc"] <= 100 and 0 <= row["train_acc"] <= 100
        assert set(row["firing_rate"]) >= {"sn1", "layer1.0.sn1", "layer3.0.sn2"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "best_test_acc",
        "best_epoch",
        "final_test_acc",
        "num_params",
        "train_samples",
        "test_samples",
        "epochs_completed",
        "wall_time_s",
        "config",
        "torch_version",
        "device",
        "world_size",
        "git_commit",
    ):
        assert key in on_disk, key
    assert on_disk["best_test_acc"] == max(r["test_acc"] for r in rows) == summary["best_test_acc"]
    assert on_disk["final_test_acc"] == rows[-1]["test_acc"]
    assert (
        on_disk["train_samples"] == 96 and on_disk["test_samples"] == 96 and on_disk["epochs_completed"] == 2
    )
    assert on_disk["config"]["model"]["depth"] == 8 and on_disk["world_size"] == 1
    assert (tmp_path / "train.log").read_text().count("epoch 2:") == 1
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and (tmp_path / "checkpoints" / "best.pt").is_file()
    assert set(last) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "config"}
    # weights_only loading is what load_checkpoint must use: a plain weights_only load works too.
    torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)


def test_two_epochs_equal_one_epoch_then_resume(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(straight, "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5")
    # max_steps=3 is one epoch of 96 samples at batch 32: the run stops like an interrupted one.
    _run(resumed, "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5", "trainer.max_steps=3")
    assert len(read_metrics(resumed)) == 1
    _run(resumed, "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5", "trainer.resume=auto")
    assert read_metrics(resumed) == read_metrics(straight)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_another_run_directory(tmp_path: Path) -> None:
    _run(tmp_path / "a", "trainer.max_steps=3")
    _run(tmp_path / "b", f"trainer.resume={tmp_path / 'a'}")
    assert [r["epoch"] for r in read_metrics(tmp_path / "b")] == [1, 2]


def test_resume_with_an_incompatible_config_names_the_keys(tmp_path: Path) -> None:
    _run(tmp_path, "trainer.max_steps=3")
    with pytest.raises(CheckpointError, match=r"neuron\.levels: 3 -> 2"):
        _run(tmp_path, "trainer.resume=auto", "neuron.levels=2")


def test_deterministic_runs_write_identical_metrics(tmp_path: Path) -> None:
    _run(tmp_path / "a", "trainer.deterministic=true")
    _run(tmp_path / "b", "trainer.deterministic=true")
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_sync_interval_changes_no_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the sums every 3 steps instead of every step: the same metrics, a third of the reads."""
    flushes = {"n": 0}
    real = loop_module._flush

    def counted(*args):
        flushes["n"] += 1
        return real(*args)

    monkeypatch.setattr(loop_module, "_flush", counted)
    _run(tmp_path / "a", "trainer.deterministic=true")
    every_step = flushes["n"]
    flushes["n"] = 0
    _run(tmp_path / "b", "trainer.deterministic=true", "trainer.sync_every=3")
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert flushes["n"] < every_step / 2


def test_seed_changes_the_run(tmp_path: Path) -> None:
    _run(tmp_path / "a", "trainer.epochs=1")
    _run(tmp_path / "b", "trainer.epochs=1", "trainer.seed=7")
    assert read_metrics(tmp_path / "a") != read_metrics(tmp_path / "b")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def flaky(logits, target, *args, **kwargs):
        if kwargs.get("reduction") != "sum":  # training calls only
            calls["n"] += 1
            if calls["n"] == 5:  # epoch 2, step 5
                return real(logits, target) * math.nan
        return real(logits, target, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", flaky)
    with pytest.raises(SystemExit) as err:
        _run(tmp_path)
    assert err.value.code == 3
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "non_finite_loss" and summary["epochs_completed"] == 1
    assert "epoch 2, step 5" in (tmp_path / "train.log").read_text()


def test_snn_eval_reproduces_the_best_accuracy(tmp_path: Path) -> None:
    summary = _run(tmp_path / "run")
    result = run_eval(tmp_path / "run" / "checkpoints" / "best.pt", [])
    assert result["test_acc"] == pytest.approx(summary["best_test_acc"])
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["test_acc"] == result["test_acc"]
    other = run_eval(tmp_path / "run" / "checkpoints" / "best.pt", ["time_steps=3"], out=tmp_path / "e.json")
    assert other["time_steps"] == 3 and (tmp_path / "e.json").is_file()


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    _run(tmp_path, "trainer.epochs=1")
    path = tmp_path / "checkpoints" / "last.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last\.pt") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_smoke_run_and_snn_eval(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _cli([str(BIN / "snn-train"), *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"run directory: {run_dir}" in proc.stderr
    assert json.loads((run_dir / "summary.json").read_text())["epochs_completed"] == 1
    proc = _cli([str(BIN / "snn-eval"), f"checkpoint={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"test_acc"' in proc.stdout and (run_dir / "eval.json").is_file()


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("neuron.levels=0", "neuron.levels=0"),
        ("model.depth=21", "6n+2"),
        ("trainer.batch_size=0", "batch_size"),
    ],
)
def test_cli_invalid_value_is_one_line_no_traceback(tmp_path: Path, override: str, expect: str) -> None:
    proc = _cli(
        [sys.executable, "-m", "mlfsnn.train", *TINY, override, f"hydra.run.dir={tmp_path}"], tmp_path
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_offline_cifar10_says_where_to_put_the_data(tmp_path: Path) -> None:
    proc = _cli(
        [
            sys.executable,
            "-m",
            "mlfsnn.train",
            f"dataset.root={tmp_path / 'c10'}",
            "logger.wandb.enabled=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "cifar-10-batches-py" in proc.stderr and "+experiment=digits" in proc.stderr
    assert str(tmp_path / "c10") in proc.stderr


def test_snn_eval_missing_checkpoint(tmp_path: Path) -> None:
    proc = _cli([str(BIN / "snn-eval"), f"checkpoint={tmp_path / 'nope.pt'}"], tmp_path)
    assert proc.returncode == 2 and "nope.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_grad_norms_are_logged_per_layer(tmp_path: Path) -> None:
    _run(tmp_path, "trainer.epochs=1", "trainer.log_grad_norms=true")
    row = read_metrics(tmp_path)[0]
    assert {"conv1", "bn1", "layer1.0.conv1", "layer2.0.shortcut.0", "fc"} <= set(row["grad_norm"])
    assert all(v > 0 for v in row["grad_norm"].values())
    _run(tmp_path / "off", "trainer.epochs=1")
    assert "grad_norm" not in read_metrics(tmp_path / "off")[0]


def test_add_grad_norms_groups_parameters_by_layer() -> None:
    from mlfsnn.nn.observe import add_grad_norms

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1, bias=False))
    model[0].weight.grad = torch.full((2, 2), 1.0)
    model[0].bias.grad = torch.tensor([3.0, 3.0])
    model[1].weight.grad = torch.tensor([[3.0, 4.0]])
    sums = {"0": 1.0}
    add_grad_norms(model, sums)
    assert sums == pytest.approx({"0": 1.0 + math.sqrt(4 + 18), "1": 5.0})


def test_bf16_channels_last_trains(tmp_path: Path) -> None:
    summary = _run(tmp_path, "trainer.epochs=1", "trainer.precision=bf16", "trainer.channels_last=true")
    row = read_metrics(tmp_path)[0]
    assert math.isfinite(row["train_loss"]) and summary["status"] == "ok"


@pytest.mark.slow
def test_torch_compile_trains_like_eager(tmp_path: Path) -> None:
    _run(tmp_path / "eager", "trainer.epochs=1", "trainer.deterministic=true")
    _run(tmp_path / "compiled", "trainer.epochs=1", "trainer.deterministic=true", "trainer.compile=true")
    eager, compiled = read_metrics(tmp_path / "eager")[0], read_metrics(tmp_path / "compiled")[0]
    # Inductor may reorder float sums, so spikes near a threshold can differ: compare loosely.
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=0.05)


@pytest.mark.slow
def test_wandb_offline_run_lives_in_the_run_dir_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    on = ["logger.wandb.enabled=true"]
    _run(tmp_path, *on, "trainer.max_steps=3")
    first = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["wandb_id"]
    assert first and list((tmp_path / "wandb").glob(f"offline-run-*-{first}"))
    _run(tmp_path, *on, "trainer.resume=auto")
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["wandb_id"] == first


def test_invalid_wandb_mode_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"logger\.wandb\.mode='sometimes'"):
        _run(tmp_path, "logger.wandb.enabled=true", "logger.wandb.mode=sometimes")


def test_fp32_channels_last_on_cpu_is_ignored_with_a_warning(tmp_path: Path) -> None:
    # oneDNN's fp32 channels-last 1x1 stride-2 convolution backward corrupts the heap on some CPUs.
    with pytest.warns(RuntimeWarning, match="channels_last=true is ignored for fp32 on CPU"):
        summary = _run(tmp_path, "trainer.epochs=1", "trainer.channels_last=true")
    assert summary["status"] == "ok"


def test_the_summary_carries_the_last_epochs_training_figures(tmp_path: Path) -> None:
    """Degradation is read from these (snn-report's final train columns): the last epoch's row, also
    after a stop and a resume, not the state the run started from."""
    train(compose_cfg([*TINY, "trainer.epochs=3", "trainer.max_steps=4"]), tmp_path)  # stops in epoch 2
    summary = train(compose_cfg([*TINY, "trainer.epochs=3", "trainer.resume=auto"]), tmp_path)
    last = read_metrics(tmp_path)[-1]
    assert last["epoch"] == 3 and summary["epochs_completed"] == 3
    assert (summary["final_train_acc"], summary["final_train_loss"]) == (
        last["train_acc"],
        last["train_loss"],
    )
    assert json.loads((tmp_path / "summary.json").read_text())["final_train_acc"] == last["train_acc"]
