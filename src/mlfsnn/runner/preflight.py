"""Checks that run before Hydra creates anything: a refused command leaves no directory behind.

Hydra creates the run directory, writes ``.hydra/`` and opens ``train.log`` before it calls the task
function, so checks made there are too late. :class:`Preflight` is a Hydra callback (registered in
``configs/train.yaml``) whose ``on_run_start`` / ``on_multirun_start`` run first:

* a single run: the config is validated, and the run directory is claimed (created, locked, checked
  for a previous run; see :mod:`mlfsnn.runner.rundir`);
* a sweep: every point of the sweep is composed and validated before the first job starts, and the
  points' directories are checked for previous runs, so one bad point refuses the whole sweep; an
  Optuna search has its search space checked instead (:mod:`.search_space`).

Refusals print one line and exit with code 2 (``SystemExit`` passes through Hydra's reporting).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import UserError, exit_with, one_line
from . import distributed as dist
from .config import check_memory, validate
from .rundir import claim_run_dir, move_previous_run, run_files
from .search_space import check_objective, is_optuna, search_space_jobs

__all__ = ["Preflight", "created_run_dir", "register_resolvers"]

_CREATED: list[Path] = []  # run directories this process created (removed again on a refusal)


def register_resolvers() -> None:
    """``${mlfsnn.uid:}``: a random suffix, so launches in the same second get different directories."""
    if not OmegaConf.has_resolver("mlfsnn.uid"):
        OmegaConf.register_new_resolver("mlfsnn.uid", lambda: secrets.token_hex(2), use_cache=True)


def created_run_dir() -> Path | None:
    """The run directory the preflight of this process created, if any."""
    return _CREATED[-1] if _CREATED else None


class Preflight:
    """Hydra callback (duck-typed: Hydra calls the methods it finds)."""

    def __init__(self, **_: Any) -> None:
        register_resolvers()

    def on_run_start(self, config: DictConfig, **_: Any) -> None:
        try:
            validate(config)
            check_memory(config)
            if dist.env_rank() != 0:
                return  # other torchrun ranks write nothing; rank 0 owns the directory
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            tr = config.trainer
            if claim_run_dir(run_dir, tr.resume, bool(tr.overwrite)):
                _CREATED.append(run_dir)
        except UserError as exc:
            exit_with(one_line(exc))

    def on_multirun_start(self, config: DictConfig, **_: Any) -> None:
        try:
            jobs = _sweep_jobs(config)
        except UserError as exc:
            exit_with(one_line(exc))
        optuna = is_optuna(config)
        for where, job in jobs:
            try:
                validate(job)
                check_memory(job)
                if optuna:
                    check_objective(config, job)
            except UserError as exc:
                exit_with(f"{where}: {one_line(exc)}; nothing was run")
        # Optuna's trials are numbered 0..n_trials-1 as they start; each basic sweep point has its own.
        trials = range(int(config.hydra.sweeper.n_trials)) if optuna else ()
        numbered = [(f"trial {n}", jobs[0][1]) for n in trials] if optuna else jobs
        for num, (where, job) in enumerate(numbered):
            with open_dict(job):
                job.hydra.job.num = num
            job_dir = Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
            found = run_files(job_dir)
            if found and job.trainer.overwrite and not job.trainer.resume:
                move_previous_run(job_dir)  # before Hydra writes the job's new .hydra/ there
            elif found and not job.trainer.resume:
                exit_with(
                    f"{where}: {job_dir} already holds a run ({', '.join(found[:2])}); add "
                    "trainer.resume=auto to continue the sweep, or trainer.overwrite=true to start over"
                )

    # The other callback hooks Hydra may call.
    def on_run_end(self, **_: Any) -> None: ...
    def on_multirun_end(self, **_: Any) -> None: ...
    def on_job_start(self, **_: Any) -> None: ...
    def on_job_end(self, **_: Any) -> None: ...


def _sweep_jobs(config: DictConfig) -> list[tuple[str, DictConfig]]:
    """``(where, job config)`` for every job the basic sweeper will launch, composed as it does.

    Optuna chooses points as it goes: its search space is checked (:mod:`.search_space`); of other
    sweepers only the base config can be checked here.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    sweeper = config.hydra.sweeper
    task = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False) or [])
    if is_optuna(config):
        return search_space_jobs(config, loader, task)
    if "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return [("the base config", loader.load_sweep_config(config, [o for o in task if "," not in o]))]
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + task
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params)
    batches = BasicSweeper.split_arguments(overrides, None)[0]
    if len(batches) > int(os.environ.get("MLFSNN_PREFLIGHT_MAX_JOBS", "1000")):
        batches = batches[:1]  # a huge grid: check the first point only rather than stall here
    return [
        (f"sweep point {n} ({' '.join(b) or 'no overrides'})", loader.load_sweep_config(config, list(b)))
        for n, b in enumerate(batches)
    ]
