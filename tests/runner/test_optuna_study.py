"""The stored Optuna study: killed and rerun, two workers on one storage, stale trials, pruning.

Real processes, real SIGKILLs, a real SQLite file and the installed (current) Optuna.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from mlfsnn.runner import study as st  # noqa: E402
from runner_utils import kill_at_random_until_done, kill_when  # noqa: E402

BIN = Path(sys.executable).parent
TINY = [
    "+experiment=optuna_digits",
    "dataset.subset=96",
    "model.widths=[4,8,8]",
    "time_steps=2",
    "trainer.epochs=3",
    "trainer.batch_size=32",
    "trainer.num_workers=0",
    "trainer.progress=false",
    "logger.wandb.enabled=false",
    "hydra.sweeper.pruner=null",
]


def _cmd(*extra: str) -> list[str]:
    return [str(BIN / "snn-train"), "-m", *TINY, "hydra.sweep.dir=s", *extra]


def _run(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*extra), cwd=cwd, capture_output=True, text=True, timeout=300)


def _study(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{cwd / 's' / 'optuna.db'}")


def _summary(cwd: Path, trial: optuna.trial.FrozenTrial) -> dict:
    return json.loads((Path(trial.user_attrs["mlfsnn:job_dir"]) / "summary.json").read_text())


def _check_done(cwd: Path, n: int) -> list[optuna.trial.FrozenTrial]:
    """The study holds exactly ``n`` completed trials, each told its run's best validation accuracy,
    each in its own directory; every numbered directory belongs to a trial and holds a finished run."""
    trials = _study(cwd).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dirs = [t.user_attrs["mlfsnn:job_dir"] for t in complete]
    assert len(set(dirs)) == n  # none duplicated
    for t in complete:
        summary = _summary(cwd, t)
        assert summary["status"] == "ok" and t.value == pytest.approx(summary["best_val_acc"])
    numbered = {str(p.resolve()) for p in (cwd / "s").iterdir() if p.name.isdigit()}
    assert numbered == set(dirs)  # no directory left behind by a killed trial
    return complete


@pytest.mark.slow
def test_a_study_killed_at_random_moments_ends_with_every_trial_once(tmp_path: Path) -> None:
    # Every SIGKILL here is a lost process, which uses up one retry of its trial: allow them all.
    n6 = "hydra.sweeper.n_trials=6 hydra.sweeper.max_retries=50"
    # First a kill in the middle of trial 1, after its first epoch's checkpoint, then at seeded
    # random moments until a run of the command ends by itself.
    kill_when(_cmd(*n6.split()), tmp_path, tmp_path / "s" / "1" / "checkpoints" / "last.pt")
    kills = 1 + kill_at_random_until_done(_cmd(*n6.split()), tmp_path, seed=20)
    complete = _check_done(tmp_path, 6)
    retried = [t for t in _study(tmp_path).get_trials() if t.state == TrialState.FAIL]
    assert kills >= 2 and retried and all(t.user_attrs.get("mlfsnn:retried") for t in retried)
    # trial 1 was retried in its own directory, from its checkpoint, and ended as a whole run
    log_1 = (tmp_path / "s" / "1" / "train.log").read_text()
    assert (
        "resumed from" in log_1
        and json.loads((tmp_path / "s" / "1" / "summary.json").read_text())["epochs_completed"] == 3
    )
    again = _run(tmp_path, *n6.split())  # done: nothing to run, nothing changed
    assert again.returncode == 0 and "6 of 6 trials done" in again.stderr, again.stderr[-2000:]
    assert len(_study(tmp_path).get_trials()) == len(complete) + len(retried)


@pytest.mark.slow
def test_a_rerun_with_another_seed_continues_the_study(tmp_path: Path) -> None:
    first = _run(tmp_path, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / "s" / "0" / "summary.json").read_bytes()
    more = _run(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=7")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "3 of 3 trials done" in more.stderr
    complete = _check_done(tmp_path, 3)
    assert sorted(Path(t.user_attrs["mlfsnn:job_dir"]).name for t in complete) == ["0", "1", "2"]
    assert (tmp_path / "s" / "0" / "summary.json").read_bytes() == before
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == 3  # the rerun's sampler did not propose the first session's points


@pytest.mark.slow
def test_two_workers_on_one_storage_run_exactly_n_trials(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(_cmd("hydra.sweeper.n_trials=4"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    complete = _check_done(tmp_path, 4)
    owners = {t.user_attrs["mlfsnn:pid"] for t in complete}
    assert owners == {p.pid for p in procs}  # both worked on the study


def test_a_pruned_trial_keeps_its_run_and_is_reported(tmp_path: Path) -> None:
    pruner = "{_target_: optuna.pruners.ThresholdPruner, lower: 101.0, n_warmup_steps: 2}"
    done = _run(tmp_path, "hydra.sweeper.n_trials=1", f"hydra.sweeper.pruner={pruner}")
    assert done.returncode == 0, done.stderr[-3000:]
    (trial,) = _study(tmp_path).get_trials()
    assert trial.state == TrialState.PRUNED and sorted(trial.intermediate_values) == [1, 2]
    summary = json.loads((tmp_path / "s" / "0" / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_completed"] == 2
    assert (tmp_path / "s" / "0" / "checkpoints" / "last.pt").is_file()
    from mlfsnn.cli.report import main as report_main

    assert report_main([str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 0
    assert "1 pruned" in (tmp_path / "r" / "report.md").read_text()
    from mlfsnn.runner.sweep_status import sweep_status

    (point,) = sweep_status(tmp_path / "s").points
    assert (point.dir, point.state, point.trial, point.epochs) == ("0", "pruned", 0, 2)


def test_a_sweep_directory_with_runs_the_study_does_not_know_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s" / "0").mkdir(parents=True)
    (tmp_path / "s" / "0" / "summary.json").write_text("{}")
    proc = _run(tmp_path, "hydra.sweeper.n_trials=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "does not know" in err[0] and "nothing was run" in err[0]
    assert (tmp_path / "s" / "0" / "summary.json").read_text() == "{}"


def _running_trial(storage: str, name: str = "x", **attrs: object) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    trial = study.ask({"a": optuna.distributions.FloatDistribution(0, 1)})
    for key, value in attrs.items():
        trial.set_user_attr(f"mlfsnn:{key}", value)
    return study._storage.get_trial(trial._trial_id)


def test_stale_means_dead_here_or_silent_past_the_grace(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host, now = socket.gethostname(), time.time()
    assert st.is_stale(_running_trial(storage, host=host, pid=int(dead.stdout), beat=now), 300)
    assert not st.is_stale(_running_trial(storage, host=host, pid=os.getpid(), beat=now), 300)
    assert not st.is_stale(_running_trial(storage, host="elsewhere", pid=1, beat=now - 100), 300)
    assert st.is_stale(_running_trial(storage, host="elsewhere", pid=1, beat=now - 400), 300)
    assert st.is_stale(_running_trial(storage), 300)  # asked, then its process died at once


def test_a_stale_trial_is_failed_and_retried_once(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    trial = _running_trial(storage, host="elsewhere", pid=1, beat=time.time() - 400, job_dir="/d/3")
    study = optuna.load_study(study_name="x", storage=storage)
    assert st.fail_stale(study, 300, max_retries=2) == [trial.number]
    assert st.fail_stale(study, 300, max_retries=2) == []
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs == {
        "mlfsnn:retry_of": trial.number,
        "mlfsnn:retries": 1,
        "mlfsnn:job_dir": "/d/3",
    }
    dist = {"a": optuna.distributions.FloatDistribution(0, 1)}
    asked = study.ask(dist)
    assert asked.user_attrs["mlfsnn:retry_of"] == trial.number and asked.params == trial.params
    # a process killed between enqueuing the retry and failing the trial: no second retry
    again = _running_trial(storage, "y", host="elsewhere", pid=1, beat=0.0)
    other = optuna.load_study(study_name="y", storage=storage)
    other.enqueue_trial(again.params, user_attrs={"mlfsnn:retry_of": again.number, "mlfsnn:retries": 1})
    assert st.fail_stale(other, 300, max_retries=2) == [again.number]
    assert len(other.get_trials(states=(TrialState.WAITING,))) == 1
    assert st.budget_left(other, 5) == 5 - 1  # the retry counts as busy, the failure not at all


def test_a_study_in_optunas_journal_file(tmp_path: Path) -> None:
    done = _run(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.storage=journal:study.log")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "s" / "optuna.db").exists()
    storage = st.open_storage(f"journal:{tmp_path / 'study.log'}")  # relative to where it was started
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


@pytest.mark.parametrize("name", ["optuna.db", ".optuna.lock"])
def test_a_planted_link_at_the_study_is_refused_and_its_target_untouched(tmp_path: Path, name: str) -> None:
    (tmp_path / "s").mkdir()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not yours")
    (tmp_path / "s" / name).symlink_to(target)
    proc = _run(tmp_path, "hydra.sweeper.n_trials=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:") and name in ln]
    assert target.read_bytes() == b"not yours" and not (tmp_path / "s" / "0").exists()
