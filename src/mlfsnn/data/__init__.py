"""Datasets by name. Every builder returns train and test sets plus a :class:`DataInfo`.

A sample is ``(x, label)``: ``x`` is ``[C, H, W]`` for static images (the trainer repeats it over T
without copying) or ``[T, C, H, W]`` for event frames. The trainer moves time first, so batches reach
the model as ``[T, B, C, H, W]``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError
from ..files import LinkRefused
from .config_checks import check_dataset_config
from .info import DataInfo

__all__ = [
    "DATASETS",
    "DataError",
    "DataInfo",
    "build_datasets",
    "build_splits",
    "check_dataset_config",
    "data_os_error",
    "register",
]

Builder = Callable[[Any, int], tuple[Dataset, Dataset, DataInfo]]
DATASETS: dict[str, Builder] = {}
# Imported on first use so that `import mlfsnn` does not pull in torchvision, sklearn or tonic.
_BUILDER_MODULES = ("images", "events.dvs_gesture", "events.cifar10_dvs", "events.digits_dvs")


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn`` the builder that ``dataset.name=name`` selects."""

    def wrap(fn: Builder) -> Builder:
        DATASETS[name] = fn
        return fn

    return wrap


def build_datasets(cfg: Any, time_steps: int) -> tuple[Dataset, Dataset, DataInfo]:
    """Build ``(train, test, info)`` for ``cfg.name`` (a composed ``dataset`` config group).

    An ``OSError`` that no reader turned into its own message (no permission, a file where a folder
    should be, a name too long) becomes a one-line :class:`DataError`.
    """
    _load_builders()
    if cfg.name not in DATASETS:
        raise DataError(f"dataset.name: unknown dataset {cfg.name!r}; allowed: {', '.join(sorted(DATASETS))}")
    try:
        return DATASETS[cfg.name](cfg, time_steps)
    except OSError as exc:
        raise DataError(data_os_error(exc, str(cfg.name))) from None


def data_os_error(exc: OSError, dataset: str) -> str:
    """One line for an ``OSError`` met while preparing or reading ``dataset``: the file and the reason."""
    if isinstance(exc, LinkRefused):
        return f"dataset {dataset}: {exc}"
    where = exc.filename if isinstance(exc.filename, (str, bytes, os.PathLike)) else "a data file"
    other = f" and {exc.filename2}" if getattr(exc, "filename2", None) else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return (
        f"dataset {dataset}: cannot use {where}{other}: {reason}; check dataset.root and "
        "dataset.cache_dir (or paths.data_dir / paths.cache_dir)"
    )


def build_splits(cfg: Any, time_steps: int) -> tuple[Dataset, Dataset | None, Dataset, DataInfo]:
    """``(train, val, test, info)``: :func:`build_datasets` plus the ``dataset.val_fraction`` split.

    ``val`` is ``None`` without a split (``val_fraction`` 0, the default).
    """
    train, test, info = build_datasets(cfg, time_steps)
    fraction = cfg.get("val_fraction") or 0
    if not fraction:
        return train, None, test, info
    from .validation import split_validation

    train, val = split_validation(train, float(fraction), int(cfg.get("val_seed") or 0))
    info.train_samples, info.val_samples = len(train), len(val)
    return train, val, test, info


def _load_builders() -> None:
    for module in _BUILDER_MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:  # a dataset family not installed in this checkout
            if exc.name != f"{__name__}.{module}":
                raise
