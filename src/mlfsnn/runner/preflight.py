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
The checks that need torch import it when they run: importing this module (snn-train does, before
Hydra parses ``--help``) stays light.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError, UserError, exit_with, one_line
from ..files import refuse_links
from .rank import env_rank
from .rundir import (
    check_path_length,
    claim_run_dir,
    lock_run_dir,
    move_previous_run,
    refuse_linked_sweep_point,
    refuse_links_in_run_dir,
    release_run_dir,
    run_files,
)
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
            if _launcher(config) != "basic":
                chosen = OmegaConf.select(config, "hydra.runtime.choices", default={}).get("hydra/launcher")
                raise ConfigError(
                    f"hydra/launcher={chosen} takes effect only for a sweep: add -m (or --multirun) to "
                    "launch through it; without -m the run would start here, on this machine"
                )
            from .config import check_logger_packages, check_memory, validate  # torch: a run starts

            validate(config)
            check_logger_packages(config)
            check_memory(config)
            if env_rank() != 0:
                return  # other torchrun ranks write nothing; rank 0 owns the directory
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            tr = config.trainer
            if claim_run_dir(run_dir, tr.resume, bool(tr.overwrite)):
                _CREATED.append(run_dir)
        except UserError as exc:
            exit_with(one_line(exc))

    def on_multirun_start(self, config: DictConfig, **_: Any) -> None:
        try:
            if _launcher(config) == "slurm" and shutil.which("srun") is None:
                raise ConfigError(
                    "hydra/launcher=slurm needs a SLURM cluster (no srun on PATH here): run it on a "
                    "login node, or use hydra/launcher=local_parallel on this machine; nothing was run"
                )
            jobs = _sweep_jobs(config)
        except UserError as exc:
            exit_with(one_line(exc))
        from .config import check_logger_packages, check_memory, validate

        optuna = is_optuna(config)
        for where, job in jobs:
            try:
                validate(job)
                check_logger_packages(job)
                check_memory(job)
                if optuna:
                    check_objective(config, job)
            except UserError as exc:
                exit_with(f"{where}: {one_line(exc)}; nothing was run")
        # Optuna's trials get their directories as they start: the sweeper checks them against its
        # stored study (runner/sweeper.py); each basic sweep point has its own, checked here.
        try:
            check_sweep_dirs(config, [] if optuna else jobs)
        except UserError as exc:
            exit_with(one_line(exc))

    # The other callback hooks Hydra may call.
    # The other callback hooks Hydra may call.
    def on_run_end(self, **_: Any) -> None: ...
    def on_multirun_end(self, **_: Any) -> None: ...
    def on_job_start(self, **_: Any) -> None: ...
    def on_job_end(self, **_: Any) -> None: ...


def _launcher(config: DictConfig) -> str:
    """``basic``, ``slurm`` (submitit), ``joblib`` or the target's class name."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    for marker, name in (("BasicLauncher", "basic"), ("Slurm", "slurm"), ("Joblib", "joblib")):
        if marker in target:
            return name
    return target.rsplit(".", 1)[-1] or "basic"


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


def check_sweep_dirs(config: DictConfig, numbered: list[tuple[str, DictConfig]]) -> None:
    """Every job directory of a sweep, checked (and overwritten runs moved aside) before the first job.

    One directory per job (``hydra.sweep.subdir`` must tell them apart), no links where Hydra or
    mlfsnn write, no directory another process holds (each is locked before anything in it is
    moved, then released for its job), and for ``trainer.resume`` the point's own checkpoint must
    continue the same trajectory.
    """
    sweep_dir = Path(str(config.hydra.sweep.dir))
    check_path_length(sweep_dir, "hydra.sweep.dir")
    try:
        refuse_links(sweep_dir, ("multirun.yaml", "optimization_results.yaml", "optuna.db", ".optuna.lock"))
    except OSError as exc:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} cannot be used: {exc}") from None
    points: list[tuple[str, DictConfig, Path]] = []
    seen: dict[str, str] = {}
    for num, (where, job) in enumerate(numbered):
        with open_dict(job):
            job.hydra.job.num = num
        job_dir = Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
        key = os.path.normpath(job_dir.absolute())
        if key in seen:
            raise ConfigError(
                f"{seen[key]} and {where} would both write to {job_dir} (hydra.sweep.subdir="
                f"{OmegaConf.select(config, 'hydra.sweep.subdir')!r}); give every job its own directory, "
                "e.g. the default hydra.sweep.subdir=${hydra.job.num}; nothing was run"
            )
        seen[key] = where
        check_path_length(job_dir, "hydra.sweep.subdir")
        refuse_linked_sweep_point(job_dir, where, "; nothing was run")
        points.append((where, job, job_dir))
    held: list[Path] = []
    try:
        for where, job, job_dir in points:
            if job_dir.is_dir():
                _check_point(where, job, job_dir, held)
        for _, job, job_dir in points:  # every directory checked and held: only now move anything
            tr = job.trainer
            if job_dir in held and run_files(job_dir) and tr.overwrite and not tr.resume:
                move_previous_run(job_dir)  # before Hydra writes the job's new files there
    finally:
        for job_dir in held:
            release_run_dir(job_dir)


def _check_point(where: str, job: DictConfig, job_dir: Path, held: list[Path]) -> None:
    try:
        lock_run_dir(job_dir, f"{where}: {job_dir}")
        held.append(job_dir)
        refuse_links_in_run_dir(job_dir, f"{where}: directory")
    except UserError as exc:
        raise ConfigError(f"{one_line(exc)}; nothing was run") from None
    found, tr = run_files(job_dir), job.trainer
    if found and not tr.resume and not tr.overwrite:
        raise ConfigError(
            f"{where}: {job_dir} already holds a run ({', '.join(found[:2])}); add "
            "trainer.resume=auto to continue the sweep, or trainer.overwrite=true to start over"
        )
    if found and tr.resume:
        from .resume import check_resumable

        try:
            check_resumable(_resolved(job), tr.resume, job_dir)
        except UserError as exc:
            raise ConfigError(f"{where}: {one_line(exc)}; nothing was run") from None


def _resolved(job: DictConfig) -> dict[str, Any] | None:
    """The job's task config, resolved as the trainer resolves it; ``None`` when that needs the job."""
    task = OmegaConf.masked_copy(job, [k for k in job if k != "hydra"])
    try:
        return OmegaConf.to_container(task, resolve=True)  # type: ignore[return-value]
    except Exception:  # an interpolation only the running job can resolve: the job checks itself
        return None
