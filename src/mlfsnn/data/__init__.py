"""Datasets by name. Every builder returns train and test sets plus a :class:`DataInfo`.

A sample is ``(x, label)``: ``x`` is ``[C, H, W]`` for static images (the trainer repeats it over T
without copying) or ``[T, C, H, W]`` for event frames. The trainer moves time first, so batches reach
the model as ``[T, B, C, H, W]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError
from .info import DataInfo

__all__ = ["DATASETS", "DataError", "DataInfo", "build_datasets", "register"]

Builder = Callable[[Any, int], tuple[Dataset, Dataset, DataInfo]]
DATASETS: dict[str, Builder] = {}
# Imported on first use so that `import mlfsnn` does not pull in torchvision, sklearn or tonic.
_BUILDER_MODULES = ("images", "events.dvs_gesture", "events.cifar10_dvs")


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn`` the builder that ``dataset.name=name`` selects."""

    def wrap(fn: Builder) -> Builder:
        DATASETS[name] = fn
        return fn

    return wrap


def build_datasets(cfg: Any, time_steps: int) -> tuple[Dataset, Dataset, DataInfo]:
    """Build ``(train, test, info)`` for ``cfg.name`` (a composed ``dataset`` config group)."""
    _load_builders()
    if cfg.name not in DATASETS:
        raise DataError(f"dataset.name: unknown dataset {cfg.name!r}; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[cfg.name](cfg, time_steps)


def _load_builders() -> None:
    for module in _BUILDER_MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:  # a dataset family not installed in this checkout
            if exc.name != f"{__name__}.{module}":
                raise
