"""Preflight for the Optuna sweeper (``hydra/sweeper=optuna``, see ``+experiment=optuna_digits``).

The basic sweeper's points are known before the first job starts, so :mod:`.preflight` composes and
validates each. Optuna picks its points as the sweep goes: here every value a search-space entry
can take at its edges (each choice, both ends of an interval, every value of a range) is set on the
fixed point (a config-group choice is composed with it) and validated instead, one entry at a
time. The objective is the run's best validation accuracy (``snn-train``'s task function returns
it), so the sweep must maximise it and every point must hold out a validation split.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError
from .schema import GROUPS, PRESETS

__all__ = ["check_objective", "is_optuna", "search_space_jobs"]


def is_optuna(config: DictConfig) -> bool:
    """Whether ``config`` (with its ``hydra`` node) sweeps with Optuna (``hydra/sweeper=optuna``)."""
    return "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).lower()


def _edges(override: Any) -> list[Any]:
    """The values of one search-space override to check, typed as a trial gets them: every choice and
    range value, both ends of an interval."""
    if override.is_interval_sweep():
        interval = override.value()
        return [interval.start, interval.end]
    return list(override.sweep_iterator())


def _with(
    base: DictConfig, key: str, value: Any, config: DictConfig, loader: Any, fixed: list[str]
) -> DictConfig:
    """``base`` with ``key=value``: set in place for a plain key, composed anew for a config group."""
    if key.lstrip("+~") in GROUPS + PRESETS or "/" in key:
        return loader.load_sweep_config(config, [*fixed, f"{key}={value}"])
    job = copy.deepcopy(base)
    with open_dict(job):
        OmegaConf.update(job, key.lstrip("+"), value, merge=False)
    return job


def search_space_jobs(config: DictConfig, loader: Any, task: list[str]) -> list[tuple[str, DictConfig]]:
    """``(where, job config)`` to validate: the fixed point first, then one per search-space value.

    ``task`` holds the command line's overrides; the sweeper adds them to ``hydra.sweeper.params``: a
    sweep (``optimizer.lr='interval(0.01, 0.1)'``) replaces the entry of its key, a fixed value wins
    over any search space of its key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create(config_loader=loader).parse_overrides([*params, *task])
    except Exception as exc:  # a malformed search space in a preset or on the command line
        raise ConfigError(f"hydra.sweeper.params cannot be parsed: {str(exc).splitlines()[0]}") from None
    fixed = {
        o.get_key_element(): o.get_value_element_as_str() for o in overrides if not o.is_sweep_override()
    }
    # As the sweeper does: a fixed value wins over a search space for the same key.
    space = {o.get_key_element(): _edges(o) for o in overrides if o.is_sweep_override()}
    space = {k: v for k, v in space.items() if k not in fixed}
    base = [f"{k}={v}" for k, v in fixed.items()]
    jobs = [("the search's fixed settings", loader.load_sweep_config(config, base))]
    for key, values in space.items():
        for value in values:
            where = f"search-space value {key}={value}"
            jobs.append((where, _with(jobs[0][1], key, value, config, loader, base)))
    return jobs


def check_objective(config: DictConfig, job: DictConfig) -> None:
    """Optuna maximises the validation accuracy: the direction says so and ``job`` has a split."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction")
    name = getattr(direction, "name", direction)
    if name != "maximize":
        raise ConfigError(
            f"hydra.sweeper.direction={name!r} is invalid: the objective is the best validation "
            "accuracy, so expected maximize"
        )
    fraction = OmegaConf.select(job, "dataset.val_fraction", default=None)
    if not fraction:
        raise ConfigError(
            f"dataset.val_fraction={fraction!r}: the Optuna sweep maximises the validation accuracy, "
            "so it needs a validation split; set dataset.val_fraction (e.g. 0.15)"
        )
