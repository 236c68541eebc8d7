"""The trials of an Optuna sweep for :mod:`.sweep_status`, read from its stored study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..errors import ReportError
from .sweep_points import Point, SweepStatus, point_state

__all__ = ["optuna_status"]


def _study(sweep: Path, config: Any) -> tuple[Any, str]:
    try:
        import optuna
    except ImportError:
        raise ReportError(
            f"{sweep} is an Optuna sweep: pip install 'mlfsnn[optuna]' to read its study"
        ) from None
    from . import study as st

    cwd = Path(str(OmegaConf.select(config, "hydra.runtime.cwd", default=".") or "."))
    storage = OmegaConf.select(config, "hydra.sweeper.storage")
    url = st.storage_url(storage, sweep.relative_to(cwd) if sweep.is_absolute() else sweep, cwd)
    if not storage:  # the default: the file beside the runs (wherever the sweep has moved since)
        url = f"sqlite:///{(sweep / st.DB_NAME).resolve()}"
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix) and not Path(url[len(prefix) :]).is_file():
            raise ReportError(f"{sweep}: the study's storage {url} does not exist (no trial has started?)")
    name = str(OmegaConf.select(config, "hydra.sweeper.study_name") or sweep.resolve().name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=st.open_storage(url)), url
    except KeyError:
        raise ReportError(f"{sweep}: no study '{name}' in {url}") from None


def optuna_status(sweep: Path, config: Any) -> SweepStatus:
    from optuna.trial import TrialState

    from . import study as st

    study, url = _study(sweep, config)
    grace = float(OmegaConf.select(config, "hydra.sweeper.grace_s", default=300) or 300)
    n_trials = int(OmegaConf.select(config, "hydra.sweeper.n_trials", default=0) or 0)
    latest: dict[str, tuple[Any, Point]] = {}  # job directory -> its latest trial
    for trial in study.get_trials(deepcopy=False):
        job_dir = trial.user_attrs.get(f"{st.ATTR}job_dir")
        if job_dir is None:
            continue
        point = point_state(Path(job_dir))
        point.trial, point.what = trial.number, " ".join(f"{k}={v}" for k, v in trial.params.items())
        if trial.state == TrialState.RUNNING and point.state != "running" and st.is_stale(trial, grace):
            point.state = "interrupted"  # its process is gone: a rerun retries it
        elif trial.state == TrialState.FAIL and not trial.user_attrs.get(f"{st.ATTR}retried"):
            point.state = "failed"
        elif trial.state == TrialState.WAITING:
            point.state = "interrupted"  # its retry is queued
        latest[job_dir] = (trial, point)
    points = sorted((p for _, p in latest.values()), key=lambda p: int(p.dir) if p.dir.isdigit() else -1)
    left = st.budget_left(study, n_trials)
    stale = sum(p.state == "interrupted" for p in points)
    points += [Point("–", "not started") for _ in range(max(0, left - 0))]
    note = f"study '{study.study_name}' in {url}: n_trials {n_trials}"
    if stale:
        note += f"; a rerun of the command retries {stale} interrupted trial(s)"
    return SweepStatus(str(sweep), "optuna", points, note)
