"""Trust, round two: one claim per run directory, no link followed out of it, a full disk loses nothing.

Real processes, real files: a live run and a second snn-train, planted symbolic links, a small tmpfs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlfsnn.errors import UserError
from mlfsnn.files import append_bytes, atomic_write_text
from mlfsnn.runner.outputs import MetricsLog
from mlfsnn.runner.trainer import train
from runner_utils import TINY, compose_cfg, mounted_tmpfs, one_line_error, sigterm_at_step

BIN = Path(sys.executable).parent
ONE = [*TINY, "trainer.epochs=1"]


def _cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _cli([str(BIN / "snn-train"), *ONE, *args], cwd)


def _sweep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _cli([str(BIN / "snn-train"), "-m", *ONE, *args], cwd)


def _tree(folder: Path) -> dict[str, str]:
    """Every entry below ``folder``: files by their bytes' hash, links by their target (lock aside)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file() and p.name != ".mlfsnn.lock":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run made through the CLI: ``<cwd>/run``."""
    cwd = tmp_path_factory.mktemp("finished")
    proc = _train(cwd, "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (cwd / "run" / ".hydra" / "config.yaml").is_file() and (cwd / "run" / "train.log").is_file()
    return cwd


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --- 1. a second process never moves or mixes a live run's files -----------------------------------


def test_overwrite_sweep_over_a_live_run_moves_nothing(tmp_path: Path) -> None:
    live = subprocess.Popen(
        [str(BIN / "snn-train"), *TINY, "trainer.epochs=100", "hydra.run.dir=s/0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while not (tmp_path / "s" / "0" / "metrics.jsonl").is_file():
            assert live.poll() is None and time.time() < deadline, live.communicate()[1][-2000:]
            time.sleep(0.1)
        proc = _sweep(tmp_path, "trainer.seed=1,2", "hydra.sweep.dir=s", "trainer.overwrite=true")
        one_line_error(proc, "in use by another process", "nothing was run")
        assert not list((tmp_path / "s" / "0").glob("replaced-*"))
    finally:
        live.send_signal(signal.SIGTERM)  # it stops at its next step, checkpoint first
        _, err = live.communicate(timeout=300)
    assert live.returncode == 0, err[-2000:]
    run = tmp_path / "s" / "0"
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 1  # all in its own directory
    assert (run / ".hydra" / "config.yaml").is_file() and not (tmp_path / "s" / "1").exists()


# --- 2. a refused resume changes nothing; a finished run stays byte for byte ----------------------


def test_a_refused_resume_leaves_the_run_record_as_it_was(finished: Path, tmp_path: Path) -> None:
    run = _copy_run(finished / "run", tmp_path / "run")
    before = _tree(run)
    proc = _train(tmp_path, "hydra.run.dir=run", "trainer.resume=auto", "neuron.levels=2")
    one_line_error(proc, "neuron.levels")
    assert _tree(run) == before  # .hydra/config.yaml still says what the run computed


def test_resuming_a_finished_run_changes_nothing(finished: Path, tmp_path: Path) -> None:
    run = _copy_run(finished / "run", tmp_path / "run")
    before = _tree(run)
    proc = _train(tmp_path, "hydra.run.dir=run", "trainer.resume=auto")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already finished" in proc.stderr
    assert _tree(run) == before  # summary.json (wall time), train.log, metrics: untouched


def test_a_sweep_rerun_with_reordered_points_is_refused_before_any_job(tmp_path: Path) -> None:
    first = _sweep(tmp_path, "trainer.seed=1,2", "hydra.sweep.dir=s")
    assert first.returncode == 0, first.stderr[-2000:]
    before = _tree(tmp_path / "s")
    proc = _sweep(tmp_path, "trainer.seed=2,1", "hydra.sweep.dir=s", "trainer.resume=auto")
    one_line_error(proc, "sweep point 0", "trainer.seed", "nothing was run")
    after = _tree(tmp_path / "s")
    after.pop("multirun.yaml", None), before.pop("multirun.yaml", None)
    assert after == before


def test_two_sweep_points_in_one_directory_are_refused(tmp_path: Path) -> None:
    proc = _sweep(tmp_path, "trainer.seed=1,2", "hydra.sweep.dir=s", "hydra.sweep.subdir=same")
    one_line_error(proc, "sweep point 0", "sweep point 1", "hydra.sweep.subdir")
    assert not (tmp_path / "s").exists()


# --- 3. planted links are refused, their targets untouched ----------------------------------------


def _plant(tmp_path: Path, name: str) -> tuple[Path, Path, dict[str, str]]:
    """``run/<name>`` linked to a folder (or a file in it) outside the run, with user files there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    (outside / ".last.pt.abcdefgh.tmp").write_text("a user file named like our temp files\n")
    run = tmp_path / "run"
    run.mkdir()
    target = outside if name in ("checkpoints", ".hydra") else outside / "precious.txt"
    (run / name).symlink_to(target)
    return run, outside, _tree(outside)


@pytest.mark.parametrize(
    "name", [".mlfsnn.lock", "metrics.jsonl", "train.log", "summary.json", "checkpoints", ".hydra"]
)
def test_a_planted_link_in_a_run_dir_is_refused_by_the_claim(tmp_path: Path, name: str) -> None:
    from mlfsnn.errors import ConfigError
    from mlfsnn.runner.rundir import claim_run_dir

    run, outside, before = _plant(tmp_path, name)
    with pytest.raises(ConfigError, match=f"{name} is a symbolic link"):
        claim_run_dir(run, "auto", False)
    assert _tree(outside) == before and (run / name).is_symlink()


def test_a_planted_link_is_refused_by_snn_train_before_hydra_writes(tmp_path: Path) -> None:
    run, outside, before = _plant(tmp_path, "train.log")  # Hydra's log handler would append to it
    one_line_error(_train(tmp_path, "hydra.run.dir=run"), "symbolic link", "train.log")
    assert _tree(outside) == before and sorted(p.name for p in run.iterdir()) == [".mlfsnn.lock", "train.log"]


def test_a_planted_link_in_a_sweep_point_is_refused_before_any_job(tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    (tmp_path / "s" / "1").mkdir(parents=True)
    (tmp_path / "s" / "1" / "train.log").symlink_to(outside)
    proc = _sweep(tmp_path, "trainer.seed=1,2", "hydra.sweep.dir=s")
    one_line_error(proc, "sweep point 1", "symbolic link", "train.log")
    assert outside.read_text() == "keep me\n" and not (tmp_path / "s" / "0").exists()


def test_a_sweep_point_directory_that_is_a_link_is_refused_before_any_job(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "1").symlink_to(outside)  # the sweep names its points' folders: a link was planted
    proc = _sweep(tmp_path, "trainer.seed=1,2", "hydra.sweep.dir=s")
    one_line_error(proc, "sweep point 1", "s/1 is a symbolic link", "nothing was run")
    assert list(outside.iterdir()) == [] and not (tmp_path / "s" / "0").exists()


def test_a_sweep_point_linked_while_the_sweep_runs_is_refused_by_its_job(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cmd = [str(BIN / "snn-train"), "-m", *ONE, "trainer.seed=1,2", "hydra.sweep.dir=s"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "s" / "0").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "s" / "1").symlink_to(outside)  # after the sweep's own check, while point 0 trains
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" not in err, err[-3000:]
    assert f"sweep point 1: {tmp_path / 's' / '1'} is a symbolic link" in err, err[-3000:]
    assert list(outside.iterdir()) == []  # nothing written through it
    assert (tmp_path / "s" / "0" / "summary.json").is_file()  # the point before it finished


def test_a_lock_file_with_a_second_name_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    (tmp_path / "run").mkdir()
    os.link(outside, tmp_path / "run" / ".mlfsnn.lock")
    one_line_error(_train(tmp_path, "hydra.run.dir=run"), "hard link")
    assert outside.read_text() == "keep me\n"


def test_append_and_log_never_follow_a_link(tmp_path: Path) -> None:
    from mlfsnn.files import LinkRefused, NoFollowFileHandler

    target = tmp_path / "target"
    target.write_text("keep\n")
    (tmp_path / "metrics.jsonl").symlink_to(target)
    with pytest.raises(LinkRefused):
        append_bytes(tmp_path / "metrics.jsonl", b"{}\n")
    (tmp_path / "train.log").symlink_to(target)
    with pytest.raises(LinkRefused):
        NoFollowFileHandler(str(tmp_path / "train.log"))
    atomic_write_text(tmp_path / "metrics.jsonl", "{}\n")  # a whole-file write replaces the link itself
    assert target.read_text() == "keep\n" and not (tmp_path / "metrics.jsonl").is_symlink()


# --- 4. a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs (root only), filled to the last few KiB."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield disk


def test_a_full_disk_at_start_is_one_line_and_leaves_no_directory(tiny_disk: Path, tmp_path: Path) -> None:
    proc = _train(tmp_path, f"hydra.run.dir={tiny_disk}/run/deeper")
    one_line_error(proc, "No space left on device")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]


def test_a_failed_append_leaves_no_half_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, [{"epoch": 1, "test_acc": 50.0}])
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data) -> int:  # the disk fills in the middle of the line
        if len(data) > 8:
            return real_write(fd, bytes(data[:8]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(UserError, match="No space left on device"):
        log.append({"epoch": 2, "test_acc": 60.0, "note": "x" * 100})
    monkeypatch.undo()
    assert path.read_bytes() == before and log.history == [{"epoch": 1, "test_acc": 50.0}]


# --- 5. smaller ones --------------------------------------------------------------------------------


def test_an_overlong_run_dir_is_one_line(tmp_path: Path) -> None:
    proc = _train(tmp_path, f"hydra.run.dir=runs/{'a' * 300}")
    one_line_error(proc, "hydra.run.dir", "255")
    assert not (tmp_path / "runs").exists()


def test_wall_time_counts_every_process_of_a_resumed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sigterm_at_step(monkeypatch, 2, sleep_after_first=1.0)  # the first process spends > 1 s
    first = train(compose_cfg(ONE), tmp_path)
    assert first["status"] == "preempted"
    monkeypatch.undo()
    resumed = train(compose_cfg([*ONE, "trainer.resume=auto"]), tmp_path)
    assert resumed["status"] == "ok"
    assert resumed["wall_time_s"] >= resumed["process_wall_time_s"] + 1.0
    assert resumed["wall_time_s"] >= first["wall_time_s"]


def test_an_optuna_rerun_with_another_seed_leaves_trial_zero_as_it_was(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    tiny = ["+experiment=optuna_digits", *[o for o in ONE if not o.startswith("+experiment")]]
    cmd = [str(BIN / "snn-train"), "-m", *tiny, "hydra.sweeper.n_trials=1", "hydra.sweep.dir=s"]
    first = _cli(cmd, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _tree(tmp_path / "s" / "0")
    # the study is stored: another sampler seed continues it; the finished trial is not run again
    proc = _cli([*cmd, "hydra.sweeper.sampler.seed=7", "trainer.resume=auto"], tmp_path)
    assert proc.returncode == 0 and "1 of 1 trials done" in proc.stderr, proc.stderr[-2000:]
    assert _tree(tmp_path / "s" / "0") == before
    # without its study the directory's run is not this search's: refused, nothing touched
    (tmp_path / "s" / "optuna.db").unlink()
    one_line_error(_cli(cmd, tmp_path), "does not know")
    assert _tree(tmp_path / "s" / "0") == before
