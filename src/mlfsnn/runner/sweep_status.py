"""What a sweep directory holds, point by point: what a rerun of its command will do.

A grid's points come from its ``multirun.yaml`` (the sweep's overrides, expanded as Hydra's basic
sweeper does); an Optuna search's trials from its stored study. Each point's state is read from
its run directory without writing anything there: ``running`` (another process holds its lock),
``done``, ``pruned``, ``failed`` (a crash or a non-finite loss), ``interrupted`` (a checkpoint or
metrics but no result: a rerun with ``trainer.resume=auto`` continues it) or ``not started``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..errors import ReportError
from .sweep_points import Point, SweepStatus, point_state
from .sweep_trials import optuna_status

__all__ = ["Point", "SweepStatus", "sweep_status"]


def _grid(sweep: Path, config: Any) -> SweepStatus:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *task])
    batches = BasicSweeper.split_arguments(overrides, None)[0]
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
    points = []
    for num, batch in enumerate(batches):
        point = point_state(sweep / str(num))
        point.what = " ".join(o for o in batch if o.split("=", 1)[0] in swept)
        points.append(point)
    return SweepStatus(str(sweep), "grid", points)


def sweep_status(sweep: Path) -> SweepStatus:
    """The state of every point of the sweep in ``sweep`` (its ``multirun.yaml`` says what it is)."""
    path = sweep / "multirun.yaml"
    if not path.is_file():
        raise ReportError(
            f"{sweep}: no multirun.yaml here, so not a sweep directory (snn-train -m writes one)"
        )
    try:
        config = OmegaConf.load(path)
    except Exception as exc:  # yaml's and omegaconf's errors alike
        raise ReportError(f"{path} cannot be read: {str(exc).splitlines()[0]}") from None
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    if "mlfsnn_sweeper" in target:
        return optuna_status(sweep, config)
    return _grid(sweep, config)
