"""The debug presets (configs/debug/) on the digits recipe: each does what its one-liner says.

``debug=NAME`` is placed after every ``+experiment`` by snn-train (``debug_last``); the compose API
takes the same order as ``+debug=NAME`` after ``+experiment=digits``.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mlfsnn.nn import MLF, TdBatchNorm
from mlfsnn.runner.config import validate
from mlfsnn.runner.debug import layer_labels
from mlfsnn.runner.preflight import register_resolvers
from mlfsnn.runner.schema import check_overrides, debug_last
from mlfsnn.runner.trainer import Trainer, train
from runner_utils import compose_cfg, read_metrics

BIN = Path(sys.executable).parent
CONFIGS = importlib.resources.files("mlfsnn.configs")
PRESETS = sorted(p.name[:-5] for p in (CONFIGS / "debug").iterdir() if p.name.endswith(".yaml"))
# The digits recipe at a size that runs in seconds; no epochs or subset: the presets choose them.
SMALL = [
    "+experiment=digits",
    "dataset.size=8",
    "model.depth=8",
    "model.widths=[4,8,8]",
    "time_steps=2",
    "trainer.progress=false",
    "logger.wandb.enabled=false",
]


def _cfg(preset: str, *extra: str):
    return compose_cfg(debug_last([f"debug={preset}", *SMALL, *extra]))


def test_the_four_presets_are_shipped() -> None:
    assert PRESETS == ["default", "fdr", "overfit", "profile"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_with_every_experiment(preset: str) -> None:
    experiments = sorted(p.name[:-5] for p in (CONFIGS / "experiment").iterdir() if p.name.endswith(".yaml"))
    for name in experiments:
        args = debug_last([f"debug={preset}", f"+experiment={name}"])
        check_overrides(args)
        cfg = compose_cfg(args)
        validate(cfg)
        if preset == "overfit":
            assert cfg.trainer.epochs == 300 and cfg.trainer.stop_at_train_acc == 99  # over the recipe's


def test_the_preset_beats_the_experiment_and_the_command_line_beats_the_preset() -> None:
    args = debug_last(["debug=overfit", "+experiment=digits", "trainer.eval_every=5"])
    assert args == ["+experiment=digits", "trainer.eval_every=5", "+debug=overfit"]
    register_resolvers()  # ${mlfsnn.uid:} of the run directory
    cfg = compose_cfg(args, return_hydra_config=True)
    assert cfg.trainer.epochs == 300  # digits says 8
    assert cfg.scheduler.name == "constant"  # digits says cosine
    assert cfg.trainer.eval_every == 5
    assert cfg.hydra.run.dir.startswith("outputs/debug/")


def test_fdr_writes_no_checkpoint_and_no_record(tmp_path: Path) -> None:
    """Through the CLI, as documented: ``debug=fdr`` without a '+', before the experiment."""
    cmd = [str(BIN / "snn-train"), "debug=fdr", *SMALL, "logger=all", f"hydra.run.dir={tmp_path / 'run'}"]
    cmd.remove("logger.wandb.enabled=false")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    left = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert {n for n in left if not n.startswith(".hydra/")} == {"train.log", ".mlfsnn.lock"}
    out = proc.stdout + proc.stderr
    assert "debug=fdr: nothing was written" in out
    assert "checkpoints/best.pt, checkpoints/last.pt" in out
    assert "the loggers' files: csv/, tensorboard/, wandb/" in out
    line = next(x for x in out.splitlines() if x.strip().startswith('{"epoch": 1'))
    row = json.loads(line)
    assert row["step"] == 1 and "test_acc" in row  # one training step, then the test batch
    assert "32 train / 32 test samples" in out  # every split capped at one batch
    assert f"run directory: {run} (" in proc.stderr.splitlines()[-1]  # the summary line, last
    assert "├── dataset" not in out  # no config tree when stderr is not a terminal (print_config=auto)


def test_overfit_reaches_the_target_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mlfsnn"):
        summary = train(_cfg("overfit"), tmp_path)
    rows = read_metrics(tmp_path)
    assert summary["train_samples"] == 64
    assert rows[-1]["train_acc"] >= 95 and len(rows) < 300  # stopped at the target, not the budget
    assert all(r["train_acc"] < 99 for r in rows[:-1])
    assert "test_acc" in rows[-1] and all("test_acc" not in r for r in rows[:-1])  # tested once, at the end
    assert f"training accuracy {rows[-1]['train_acc']:.2f}% at epoch {len(rows)}" in caplog.text


def test_profile_writes_a_trace_and_names_the_mlf_kernels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mlfsnn"):
        summary = train(_cfg("profile"), tmp_path)
    assert summary["steps"] == 7
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    steps = {n for n in names if n and n.startswith("ProfilerStep#")}
    assert len(steps) == 5  # steps 3..7 recorded (one skipped, one warm-up)
    assert {"mlfsnn::tdbn_mlf_forward", "mlfsnn::tdbn_mlf_backward"} <= names  # the fused tdBN + MLF kernel
    table = (tmp_path / "profile" / "ops.txt").read_text()
    assert "top 20 operators by self CPU time" in table and "mlfsnn::tdbn_mlf_forward" in table
    assert table.strip() in caplog.text


def test_layer_labels_name_the_mlf_and_tdbn_calls() -> None:
    net = nn.Sequential(TdBatchNorm(2), MLF(levels=2))
    x = torch.randn(2, 3, 2, 4, 4)
    with layer_labels(), torch.profiler.profile() as prof:
        net(x)
    keys = {e.key for e in prof.key_averages()}
    assert {"mlfsnn::MLF", "mlfsnn::TdBatchNorm"} <= keys
    assert MLF.forward.__name__ == "forward" and TdBatchNorm.forward.__name__ == "forward"  # restored
    assert not net[0]._forward_hooks and not net[1]._forward_pre_hooks  # fusion is never switched off


def test_default_is_one_short_epoch_with_anomaly_detection(tmp_path: Path) -> None:
    trainer = Trainer(_cfg("default"), tmp_path)
    trainer.setup()
    trainer.resume()
    seen = []
    trainer.model.fc.register_forward_hook(lambda *_: seen.append(torch.is_anomaly_enabled()))
    trainer.fit()
    summary = trainer.finish()
    assert summary["epochs_completed"] == 1 and summary["steps"] == 20
    assert seen and all(seen)  # every forward pass of training and evaluation ran in anomaly mode
    assert not torch.is_anomaly_enabled()
