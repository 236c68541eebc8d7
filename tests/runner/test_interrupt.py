"""Ctrl-C, as a terminal sends it: SIGINT to the whole process group (DataLoader workers included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlfsnn.runner.checkpoint import load_checkpoint
from runner_utils import TINY, read_metrics

BIN = Path(sys.executable).parent
# Workers on: a terminal's Ctrl-C reaches them too, and they must leave it to the main process.
RUN = [
    *[o for o in TINY if not o.startswith("trainer.num_workers")],
    "trainer.num_workers=1",
    "trainer.epochs=6",
]


def _start(cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "snn-train"), *RUN, "hydra.run.dir=run", *extra],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def _ctrl_c(proc: subprocess.Popen, run: Path, times: int = 1) -> tuple[int, str]:
    deadline = time.time() + 180
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    seen = ""
    if times == 2:
        # The second Ctrl-C once the first is handled, as a person presses it: two signals that land
        # before Python runs its handler count as one.
        while "Ctrl-C again stops at once" not in seen:
            line = proc.stderr.readline()
            assert line, seen[-2000:]
            seen += line
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    err = seen + err
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, err


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("straight")
    proc = subprocess.run(
        [str(BIN / "snn-train"), *RUN, "hydra.run.dir=run"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd / "run"


def test_one_ctrl_c_saves_a_checkpoint_and_the_run_continues_exactly(tmp_path: Path, straight: Path) -> None:
    code, err = _ctrl_c(_start(tmp_path), tmp_path / "run")
    assert code == 128 + signal.SIGINT, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("stopped by")]
    assert lines == [
        f"stopped by Ctrl-C, checkpoint saved; continue with: trainer.resume=auto hydra.run.dir="
        f"{(tmp_path / 'run').resolve()}"
    ], err[-2000:]
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", require_training_state=True)
    assert saved["epoch"] < 6
    resumed = subprocess.run(
        [str(BIN / "snn-train"), *RUN, "hydra.run.dir=run", "trainer.resume=auto"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_metrics(tmp_path / "run") == read_metrics(straight)


def test_a_second_ctrl_c_stops_at_once_in_one_line(tmp_path: Path) -> None:
    code, err = _ctrl_c(_start(tmp_path), tmp_path / "run", times=2)
    assert code == 128 + signal.SIGINT, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "interrupted (Ctrl-C)" in errors[0], err[-2000:]
