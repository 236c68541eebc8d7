"""Hydra's sweep overrides as Optuna distributions, for ``hydra/sweeper=optuna``.

``choice(a, b)`` is categorical; ``range(lo, hi, step)`` an integer (or stepped float) range,
``hi`` excluded as in Python; ``interval(lo, hi)`` a uniform interval, integer when both ends are;
``tag(log, interval(...))`` samples on a log scale. A fixed value on the command line wins over a
search space of the same key (as with Hydra's basic sweeper).
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ..errors import ConfigError

__all__ = ["search_space"]


def _is_int(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _distribution(override: Any) -> BaseDistribution:
    key, log = override.get_key_element(), "log" in override.value().tags
    if override.is_choice_sweep():
        choices = [v for v in override.sweep_iterator()]
        return CategoricalDistribution(
            [c if c is None or isinstance(c, (bool, int, float, str)) else str(c) for c in choices]
        )
    if override.is_range_sweep():
        r = override.value()
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"hydra.sweeper.params: {key}=range({r.start}, {r.stop}, {r.step}) is empty")
        if _is_int(r.start, r.stop, r.step):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(r.step), log=False)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(r.step))
    if override.is_interval_sweep():
        i = override.value()
        if _is_int(i.start, i.end):
            return IntDistribution(int(i.start), int(i.end), log=log)
        return FloatDistribution(float(i.start), float(i.end), log=log)
    raise ConfigError(
        f"hydra.sweeper.params: {key} is not a search space Optuna can sample: {override.input_line}"
    )


def search_space(overrides: list[Any]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """``(distributions, fixed)`` of parsed overrides: the search space, and ``key=value`` overrides
    every trial gets as they are."""
    fixed = {
        o.get_key_element(): o.get_value_element_as_str() for o in overrides if not o.is_sweep_override()
    }
    space: dict[str, BaseDistribution] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override() and key not in fixed:
            try:
                space[key] = _distribution(override)
            except ValueError as exc:  # optuna's own check of the bounds (low > high, log with 0)
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"hydra.sweeper.params: {key}={override.input_line}: {exc}") from None
    return space, fixed
