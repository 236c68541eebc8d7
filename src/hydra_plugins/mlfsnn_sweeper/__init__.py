"""mlfsnn's Optuna sweeper, as a Hydra plugin (``hydra/sweeper=optuna``).

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace, so the class lives here; it
stays light (Hydra imports every plugin module when it scans) and hands the work to
:class:`mlfsnn.runner.sweeper.OptunaSearch`, which needs optuna (``pip install 'mlfsnn[optuna]'``).
Why not hydra-optuna-sweeper: its last release needs optuna < 3, keeps the study in memory, cannot
continue a killed search and has no pruning (README: Sweeps).
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

__all__ = ["OptunaSweeper"]


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.search: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        try:
            import optuna  # noqa: F401
        except ImportError:
            from mlfsnn.errors import exit_with

            exit_with(
                "hydra/sweeper=optuna needs optuna (>= 4), which is not installed: "
                "pip install 'mlfsnn[optuna]'; nothing was run"
            )
        from mlfsnn.runner.sweeper import OptunaSearch

        self.search = OptunaSearch(self.settings, hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
