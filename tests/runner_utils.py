"""Helpers for runner tests: compose configs with Hydra's compose API, tiny overrides."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import mlfsnn.runner.loop as loop_module

# A net and data small enough that one epoch takes about a second on one core.
TINY = [
    "+experiment=digits",
    "dataset.subset=96",
    "dataset.size=8",
    "model.depth=8",
    "model.widths=[4,8,8]",
    "time_steps=2",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.num_workers=0",
    "trainer.progress=false",
    "logger.wandb.enabled=false",
]


def compose_cfg(
    overrides: list[str] | None = None, config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    with initialize_config_module("mlfsnn.configs", version_base="1.3"):
        return compose(config_name, overrides=overrides or [], return_hydra_config=return_hydra_config)


def read_metrics(run_dir: Path, drop_timing: bool = True) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if drop_timing:
        for row in rows:
            for key in ("epoch_time_s", "train_samples_per_s"):
                row.pop(key, None)
    return rows


def sigterm_at_step(monkeypatch: pytest.MonkeyPatch, step: int, sleep_after_first: float = 0.0) -> None:
    """Send this process SIGTERM right after training step ``step`` (the loop's stop check)."""
    real = loop_module._flush
    count = {"n": 0}

    def deliver(pending, progress, ctx, epoch, global_step, guard):
        if guard is not None:
            count["n"] += 1
            if count["n"] == 1 and sleep_after_first:
                time.sleep(sleep_after_first)
            if count["n"] == step:
                os.kill(os.getpid(), signal.SIGTERM)
        return real(pending, progress, ctx, epoch, global_step, guard)

    monkeypatch.setattr(loop_module, "_flush", deliver)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one ``error:`` line of a CLI that refused (exit 2, no traceback), containing ``needles``."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def start_group(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """``cmd`` in a process group of its own (as a terminal's job), stderr kept."""
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the whole group: the launcher's worker processes die with it."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_when(cmd: list[str], cwd: Path, path: Path) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``path`` exists (e.g. a point's first checkpoint)."""
    proc, deadline = start_group(cmd, cwd), time.time() + 120
    while not path.is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    kill_group(proc)


def kill_at_random_until_done(cmd: list[str], cwd: Path, seed: int, tries: int = 8) -> int:
    """Run ``cmd`` again and again, SIGKILLed after a seeded random 2-6 s, until a run ends by itself
    (the last try is never killed); it must succeed. Returns the number of kills."""
    rng, kills = random.Random(seed), 0
    for attempt in range(tries + 1):
        proc = start_group(cmd, cwd)
        try:
            proc.wait(timeout=rng.uniform(2.0, 6.0) if attempt < tries else 300)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read()[-3000:]
        return kills
    raise AssertionError(f"killed {kills} times and never finished")


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``"1m"``) mounted at ``folder`` (created), unmounted afterwards; the
    test is skipped where it cannot be mounted (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    mounted = False
    if os.geteuid() == 0:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            mounted = subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
