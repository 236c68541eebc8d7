"""Data parallel on CPU (gloo): two processes match one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlfsnn.runner.checkpoint import load_checkpoint
from runner_utils import TINY, read_metrics

DDP = [*TINY, "trainer.epochs=1", "scheduler=constant", "trainer.deterministic=true", "dataset.subset=64"]


def _single(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlfsnn.train", *DDP, *extra, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=run_dir.parent)


def _torchrun(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _torchrun_cmd(run_dir, *extra), capture_output=True, text=True, timeout=300, cwd=run_dir.parent
    )


def _torchrun_cmd(run_dir: Path, *extra: str) -> list[str]:
    runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    return [*runner, "-m", "mlfsnn.train", *DDP, *extra, f"hydra.run.dir={run_dir}"]


@pytest.mark.slow
def test_two_processes_with_sync_bn_match_one_process(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    (tmp_path / "cwd").mkdir()
    proc = _single(one)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _torchrun(two, "trainer.sync_bn=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(one / "checkpoints" / "last.pt")
    b = load_checkpoint(two / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 2  # 64 samples, global batch 32
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=1e-5, rtol=1e-5, msg=key)
    ma, mb = read_metrics(one), read_metrics(two)
    assert ma[0]["train_loss"] == pytest.approx(mb[0]["train_loss"], abs=1e-5)
    assert ma[0]["test_acc"] == pytest.approx(mb[0]["test_acc"])
    assert ma[0]["firing_rate"] == pytest.approx(mb[0]["firing_rate"], abs=1e-5)
    summary = (two / "summary.json").read_text()
    assert '"world_size": 2' in summary
    # Only rank 0 wrote files: one run directory, one log.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "one", "two"]
    assert not list((tmp_path / "cwd").iterdir())


@pytest.mark.slow
def test_without_sync_bn_statistics_are_per_process(tmp_path: Path) -> None:
    proc = _torchrun(tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = tmp_path / "one"
    assert _single(one).returncode == 0
    a = load_checkpoint(one / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["model"]
    # Half-batch moments differ from the global ones, so the runs diverge measurably.
    assert any(not torch.allclose(a[k], b[k], atol=1e-5) for k in a if k.endswith("running_var"))


def test_global_batch_must_divide_by_processes(tmp_path: Path) -> None:
    proc = _torchrun(tmp_path / "run", "trainer.batch_size=31")
    assert proc.returncode != 0
    # torchrun adds its own report of the failed workers; ours is the one-line error before it.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: trainer.batch_size=31")]
    assert errors and "divide by the 2 processes" in errors[0]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
def test_a_hung_peer_ends_the_job_in_one_line_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    import os
    import signal
    import time

    run_dir = tmp_path / "run"
    cmd = _torchrun_cmd(run_dir, "trainer.epochs=200", "trainer.dist_timeout_s=5")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints" / "last.pt").is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert (run_dir / "checkpoints" / "last.pt").is_file(), "no checkpoint appeared"
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        rank1 = max(workers)  # started second
        os.kill(rank1, signal.SIGSTOP)  # hung, not dead: only a timeout can tell
        _, stderr = proc.communicate(timeout=240)
    finally:
        for pid in _children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors and "trainer.dist_timeout_s=5" in errors[0], stderr[-3000:]
    assert "the last checkpoint is kept" in errors[0]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] >= 1
