"""Event-camera datasets: AEDAT readers, framing into ``[T, 2, H, W]`` counts, the frame cache.

Importing this package imports neither tonic nor a dataset module; :func:`event_dataset` loads the
one asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataset import EventDataset

__all__ = ["EVENT_DATASETS", "event_dataset"]

# dataset.name -> the EventDataset subclass in the module of that name
EVENT_DATASETS = {"dvs_gesture": "DVSGesture", "cifar10_dvs": "CIFAR10DVS", "digits_dvs": "DigitsDVS"}


def event_dataset(name: str, cfg: Any, time_steps: int) -> EventDataset:
    """The :class:`~.dataset.EventDataset` for ``dataset.name=name`` (a key of :data:`EVENT_DATASETS`)."""
    module = importlib.import_module(f"{__name__}.{name}")
    return getattr(module, EVENT_DATASETS[name])(cfg, time_steps)
