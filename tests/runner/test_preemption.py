"""Killed or preempted runs lose nothing: resuming ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mlfsnn.runner.loop as loop_module
import mlfsnn.runner.trainer as trainer_module
from mlfsnn.runner.checkpoint import CheckpointError, load_checkpoint, load_resume_state
from mlfsnn.runner.trainer import train
from runner_utils import TINY, compose_cfg, read_metrics

# 3 epochs of 3 steps (96 samples, batch 32), a step schedule so the lr changes every epoch.
RUN = [*TINY, "trainer.epochs=3", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"]


def _run(run_dir: Path, *extra: str) -> dict:
    return train(compose_cfg([*RUN, *extra]), run_dir)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    _run(run_dir)
    return run_dir


@pytest.mark.parametrize("sync_every", [1, 2])
def test_sigterm_mid_epoch_saves_and_resumes_exactly(
    tmp_path: Path, straight: Path, monkeypatch: pytest.MonkeyPatch, sync_every: int
) -> None:
    """The stop flag is read at each flush (every ``trainer.sync_every`` steps): the checkpoint holds
    exactly the steps flushed so far, and the resumed run continues the same trajectory."""
    real = loop_module._flush
    sent = []

    def deliver_sigterm(pending, progress, ctx, epoch, step, guard):
        if guard is not None and step >= 4 and not sent:  # the first flush of epoch 2
            sent.append(step)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(pending, progress, ctx, epoch, step, guard)

    monkeypatch.setattr(loop_module, "_flush", deliver_sigterm)
    summary = _run(tmp_path, f"trainer.sync_every={sync_every}")
    stopped_at = 4 if sync_every == 1 else 5  # epoch 2's first flush: after 1 step, or after 2
    assert summary["status"] == "preempted" and summary["epochs_completed"] == 1
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["step"] == stopped_at
    assert state["in_epoch"]["batches"] == stopped_at - 3
    monkeypatch.setattr(loop_module, "_flush", real)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    _run(tmp_path, "trainer.resume=auto")
    assert read_metrics(tmp_path) == read_metrics(straight)


def _spawn(run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlfsnn.train", *RUN, *extra, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=run_dir.parent
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_process_resumes_to_identical_metrics(tmp_path: Path, straight: Path, sig: int) -> None:
    run_dir = tmp_path / "run"
    proc = _spawn(run_dir)
    _wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, err[-2000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] in ("preempted", "ok")  # the signal may land after the last step
        if summary["status"] == "preempted":
            assert (
                "trainer.resume=auto" in err and "trainer.resume=auto" in (run_dir / "train.log").read_text()
            )
    else:
        assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run(
        [sys.executable, "-m", "mlfsnn.train", *RUN, "trainer.resume=auto", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_metrics(run_dir) == read_metrics(straight)


def test_corrupt_last_checkpoint_falls_back_to_the_previous(tmp_path: Path, straight: Path) -> None:
    _run(tmp_path, "trainer.epochs=2")
    last = tmp_path / "checkpoints" / "last.pt"
    assert (tmp_path / "checkpoints" / "last.prev.pt").is_file()
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])  # truncated, as by a full disk
    state, path = load_resume_state("auto", tmp_path)
    assert path.name == "last.prev.pt" and state["epoch"] == 1
    # An explicitly named corrupt file is an error, not a silent fallback.
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        load_resume_state(str(last), tmp_path)
    _run(tmp_path, "trainer.resume=auto")
    assert read_metrics(tmp_path) == read_metrics(straight)


def test_sigterm_during_evaluation_stops_at_the_epoch_boundary(
    tmp_path: Path, straight: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trainer_module.evaluate

    def evaluate_then_signal(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(trainer_module, "evaluate", evaluate_then_signal)
    summary = _run(tmp_path, "trainer.checkpoint_every=5")  # the boundary save must not wait for epoch 5
    assert summary["status"] == "preempted" and summary["epochs_completed"] == 1
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["in_epoch"] is None
    monkeypatch.setattr(trainer_module, "evaluate", real)
    _run(tmp_path, "trainer.resume=auto", "trainer.checkpoint_every=5")
    assert read_metrics(tmp_path) == read_metrics(straight)
