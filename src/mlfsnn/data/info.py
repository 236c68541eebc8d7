"""What every dataset builder returns besides its two splits, and the ``dataset.subset`` cap."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError

__all__ = ["DataInfo", "take_subset"]


@dataclass
class DataInfo:
    name: str
    num_classes: int
    in_channels: int
    size: tuple[int, int]
    static: bool  # True: samples are [C, H, W], repeated over T by the trainer
    train_samples: int
    test_samples: int
    source: str = ""
    val_samples: int = 0  # held out of the training set by dataset.val_fraction
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def take_subset(ds: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """The first ``limit`` samples of a seeded permutation (class mix kept on average), or all."""
    n = len(ds)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return ds
    if limit < 1:
        raise DataError(f"dataset.subset must be >= 1 or null, got {limit}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:limit].sort().values.tolist()
    return Subset(ds, idx)
