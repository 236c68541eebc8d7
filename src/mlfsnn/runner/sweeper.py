"""The Optuna search behind ``hydra/sweeper=optuna`` (plugin: ``hydra_plugins.mlfsnn_sweeper``).

Ask/tell on a stored study, so that a sweep survives its process: rerunning the command continues
the study (completed trials are kept and fed to the sampler, stale trials failed and retried, see
:mod:`.study`), and several processes on one storage share it. Trial ``N`` runs in job directory
``N`` of the sweep; a retry runs in its original directory with ``trainer.resume=auto``. Each trial's
run reports its validation accuracy per epoch to the study (:mod:`.trial`), so a pruner can stop it;
the sweeper records the outcome from the run's ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError, exit_with, one_line
from ..files import atomic_write_text
from . import study as st
from .search_distributions import search_space

__all__ = ["OptunaSearch", "format_value", "sampler_seed"]

log = logging.getLogger(__name__)
RESULTS = "optimization_results.yaml"


def sampler_seed(seed: int | None, session: int) -> int | None:
    """The sampler's seed in the ``session``-th run of the command: a rerun must not propose the
    points the first session already tried (a seeded random start would repeat them)."""
    if seed is None:
        return None
    import numpy as np

    return int(np.random.SeedSequence([int(seed), session]).generate_state(1)[0])


def format_value(value: Any) -> str:
    """A parameter value as a Hydra override's value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _consecutive(batch: list[Any]) -> list[list[Any]]:
    """``batch`` split where its job numbers (the items' last element) stop counting up by one."""
    groups: list[list[Any]] = []
    for item in batch:
        if groups and item[-1] == groups[-1][-1][-1] + 1:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


class OptunaSearch:
    def __init__(
        self, settings: dict[str, Any], hydra_context: HydraContext, task: TaskFunction, config: DictConfig
    ) -> None:
        self.s = OmegaConf.create(settings)
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        cwd = Path(str(OmegaConf.select(config, "hydra.runtime.cwd", default=".")))
        self.url = st.storage_url(self.s.get("storage"), self.sweep_dir, cwd)
        self.name = str(self.s.get("study_name") or self.sweep_dir.resolve().name)
        self.n_trials, self.n_jobs = int(self.s.n_trials), max(1, int(self.s.n_jobs))
        self.grace_s, self.max_retries = float(self.s.grace_s), int(self.s.max_retries)
        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")  # type: ignore[union-attr]
        if subdir != "${hydra.job.num}":
            raise ConfigError(
                f"hydra.sweep.subdir={subdir!r} is invalid with hydra/sweeper=optuna: trial N runs in "
                "directory N of the sweep, so keep the default ${hydra.job.num}"
            )

    # --- the study -------------------------------------------------------------------------------

    def _open(self) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper says what happened itself
        with st.claim_lock(self.sweep_dir):  # two workers creating one database's tables would clash
            self.storage = st.open_storage(self.url)
            study = optuna.create_study(
                storage=self.storage,
                study_name=self.name,
                direction=str(self.s.direction),
                load_if_exists=True,
            )
            session = int(study.user_attrs.get(f"{st.ATTR}sessions", 0))
            study.set_user_attr(f"{st.ATTR}sessions", session + 1)
        sampler_cfg = OmegaConf.to_container(self.s.sampler, resolve=True) if self.s.get("sampler") else None
        if sampler_cfg:
            if "seed" in sampler_cfg:
                sampler_cfg["seed"] = sampler_seed(sampler_cfg["seed"], session)
            study.sampler = instantiate(sampler_cfg)
        if self.s.get("pruner"):
            study.pruner = instantiate(OmegaConf.to_container(self.s.pruner, resolve=True))
        return study

    def _check_sweep_dir(self, study: optuna.Study) -> None:
        """Numbered directories must belong to this study's trials: never run a trial over a run
        that some other sweep left there."""
        known = {str(t.user_attrs.get(f"{st.ATTR}job_dir")) for t in study.get_trials(deepcopy=False)}
        if not self.sweep_dir.is_dir():
            return
        for child in sorted(self.sweep_dir.iterdir()):
            ours = str(child.resolve()) in known
            if child.name.isdigit() and child.is_dir() and not ours and any(child.iterdir()):
                raise ConfigError(
                    f"hydra.sweep.dir={self.sweep_dir}: {child} holds a run that study '{self.name}' "
                    f"({self.url}) does not know; use a new hydra.sweep.dir, or the storage and "
                    "study_name that sweep used"
                )

    # --- the loop --------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> list[Any]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in (self.s.get("params") or {}).items()]
        try:
            self.space, fixed = search_space(parser.parse_overrides([*params, *arguments]))
        except ConfigError as exc:
            exit_with(f"{one_line(exc)}; nothing was run")
        self.fixed = [f"{k}={v}" for k, v in fixed.items()]
        try:
            study = self._open()
            self._check_sweep_dir(study)
        except ConfigError as exc:
            exit_with(f"{one_line(exc)}; nothing was run")
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        returns = []
        while True:
            batch = self._ask(study)
            if not batch:
                break
            returns.append(self._run(study, batch))
        self._write_results(study)
        return returns

    def _ask(self, study: optuna.Study) -> list[tuple[optuna.Trial, list[str], int]]:
        """Up to ``n_jobs`` trials to run now, with their overrides and job directory numbers."""
        batch: list[tuple[optuna.Trial, list[str], int]] = []
        with st.claim_lock(self.sweep_dir):
            failed = st.fail_stale(study, self.grace_s, self.max_retries)
            if failed:
                print(
                    f"trials {failed} of study '{self.name}' were left running by a stopped process: "
                    "failed, and retried where retries are left",
                    file=sys.stderr,
                )
            waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            room = min(self.n_jobs, st.budget_left(study, self.n_trials) + waiting)
            for _ in range(room):
                trial = study.ask(self.space)
                retry_of = trial.user_attrs.get(f"{st.ATTR}retry_of")
                job_dir = trial.user_attrs.get(f"{st.ATTR}job_dir") if retry_of is not None else None
                num = int(Path(job_dir).name) if job_dir else trial.number
                job_dir = job_dir or str((self.sweep_dir / str(num)).resolve())
                for key, value in {**st.owner_attrs(), f"{st.ATTR}job_dir": job_dir}.items():
                    trial.set_user_attr(key, value)
                overrides = [*self.fixed, *(f"{k}={format_value(v)}" for k, v in trial.params.items())]
                if not any(o.startswith("trainer.resume=") for o in self.fixed):
                    # a retry continues its directory's checkpoint, and so does a SLURM job requeued
                    # after preemption; in a new directory auto finds nothing and starts fresh
                    overrides.append("trainer.resume=auto")
                batch.append((trial, overrides, num))
        return batch

    def _run(self, study: optuna.Study, batch: list[tuple[optuna.Trial, list[str], int]]) -> list[Any]:
        trial_ids = [t._trial_id for t, _, _ in batch]
        returns: list[Any] = []
        try:
            with st.Heartbeat(self.storage, trial_ids, float(self.s.heartbeat_s)):
                for group in _consecutive(batch):  # a launch numbers its jobs from initial_job_idx on
                    returns += self.launcher.launch([o for _, o, _ in group], initial_job_idx=group[0][2])
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM, a crash): the trials that did not finish are retried by the
            # next run of the command, in their directories, from their checkpoints.
            for trial, _, _ in batch:
                frozen = study._storage.get_trial(trial._trial_id)
                if frozen.state == TrialState.RUNNING:
                    st.fail_and_retry(study, frozen, self.max_retries, "its sweep was stopped", count=False)
            raise
        for (trial, _, num), ret in zip(batch, returns, strict=True):
            self._tell(study, study._storage.get_trial(trial._trial_id), num, ret)
        return returns

    def _tell(self, study: optuna.Study, trial: FrozenTrial, num: int, ret: Any) -> None:
        if trial.state != TrialState.RUNNING:
            return  # failed as stale by another worker meanwhile
        summary_path = Path(trial.user_attrs[f"{st.ATTR}job_dir"]) / "summary.json"
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = {}
        value = ret._return_value if ret.status.name == "COMPLETED" else None
        if summary.get("status") == "preempted":  # SIGTERM under a cluster launcher: requeued
            st.fail_and_retry(study, trial, self.max_retries, "preempted", count=False)
        elif summary.get("status") == "pruned":
            study.tell(trial.number, state=TrialState.PRUNED)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            study.tell(trial.number, float(value))
        else:
            why = (
                one_line(ret._return_value)
                if isinstance(ret._return_value, BaseException)
                else "no objective"
            )
            study._storage.set_trial_user_attr(trial._trial_id, f"{st.ATTR}failed", why)
            study.tell(trial.number, state=TrialState.FAIL)
            print(f"trial {trial.number} (directory {num}) failed: {why}", file=sys.stderr)

    def _write_results(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if st.counted(t)]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": self.name,
            "storage": self.url,
            "optuna_version": optuna.__version__,
            "n_trials": self.n_trials,
            "counts": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        }
        if complete:
            best = study.best_trial
            results.update(
                best_trial=best.number,
                best_job_dir=Path(best.user_attrs.get(f"{st.ATTR}job_dir", "")).name,
                best_params=dict(best.params),
                best_value=float(best.value),  # type: ignore[arg-type]
            )
        atomic_write_text(self.sweep_dir / RESULTS, OmegaConf.to_yaml(OmegaConf.create(results)))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        best = f"; best value {results['best_value']:.2f} (trial {results['best_trial']})" if complete else ""
        more = f", {running} still running elsewhere" if running else ""
        print(f"study '{self.name}': {len(done)} of {self.n_trials} trials done{more}{best}", file=sys.stderr)
