"""Shared by the data layer's trust tests (tests/data/test_trust_data*.py): the crafted DVS-Gesture trials,
the snn-data arguments that point at them, and the one-line-error checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from event_fixtures import gesture_trial
from mlfsnn.cli.data import main

BIN = Path(sys.executable).parent
ROWS = [(1, 10_000, 30_000), (5, 40_000, 60_000), (11, 70_000, 90_000)]


def trials(users=(1, 2, 25)) -> dict:
    return {f"user{u:02d}_led": (gesture_trial(ROWS, u), ROWS) for u in users}


def gesture_args(root: Path, cache: Path) -> list[str]:
    return [
        "dataset=dvs_gesture",
        f"dataset.root={root}",
        f"paths.cache_dir={cache}",
        "time_steps=4",
        "dataset.bin_ms=1",
    ]


def cifar_args(root: Path, cache: Path) -> list[str]:
    return ["dataset=cifar10_dvs", f"dataset.root={root}", f"paths.cache_dir={cache}", "time_steps=4"]


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert all(n in errors[0] for n in needles), errors[0]
    return errors[0]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """``snn-data argv`` in this process: exit 2 and exactly one ``error:`` line holding ``needles``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [line[line.index("error:") :] for line in err.split("\n") if "error:" in line]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
