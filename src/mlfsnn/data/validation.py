"""A validation split carved out of the training set: seeded, stratified, disjoint, unaugmented.

Selecting the epoch (or the hyperparameters) on the test set, as "best test accuracy" does,
reports an optimistic number. ``dataset.val_fraction`` holds out part of the *training* data
instead; model selection then reads validation accuracy and the test set is only reported.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import ConfigError

__all__ = ["dataset_labels", "split_validation"]


def _base(ds: Dataset) -> tuple[Dataset, list[int] | None]:
    """The dataset under any Subset wrappers, and the indices into it (None: all of it)."""
    indices: list[int] | None = None
    while isinstance(ds, Subset):
        idx = list(ds.indices)
        indices = idx if indices is None else [idx[i] for i in indices]
        ds = ds.dataset
    return ds, indices


def dataset_labels(ds: Dataset) -> torch.Tensor:
    """Class labels of every sample, read without loading the samples where the dataset allows."""
    base, indices = _base(ds)
    labels: Any = None
    if isinstance(base, TensorDataset):
        labels = base.tensors[1]
    elif hasattr(base, "targets"):  # torchvision
        labels = base.targets
    elif hasattr(base, "labels"):  # the event frame cache
        labels = base.labels
    if labels is None:
        return torch.tensor([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]
    labels = torch.as_tensor(labels).long()
    return labels[indices] if indices is not None else labels


def _unaugmented(ds: Dataset) -> Dataset:
    """The same samples without training augmentation (builders set ``eval_transform`` for that)."""
    base, indices = _base(ds)
    if not hasattr(base, "eval_transform"):
        return ds
    plain = copy.copy(base)
    plain.transform = base.eval_transform  # type: ignore[attr-defined]
    return Subset(plain, indices) if indices is not None else plain


def split_validation(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(train without val, val)``: ``fraction`` of every class, chosen by ``seed``.

    Stratified so that a small split keeps the class mix; the same seed gives the same split on
    every machine and on resume. The validation samples come without training augmentation.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"dataset.val_fraction={fraction!r} is invalid: expected a number in [0, 1)")
    labels = dataset_labels(train)
    gen = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    val: list[int] = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        take = round(len(members) * fraction)
        if len(members) > 1:
            take = min(max(take, 1), len(members) - 1)  # both sides keep every class
        val += members[:take].tolist()
    val_set = set(val)
    keep = [i for i in range(len(labels)) if i not in val_set]
    if not keep or not val:
        raise ConfigError(
            f"dataset.val_fraction={fraction} leaves {len(keep)} training and {len(val)} validation "
            f"samples of {len(labels)}: choose a fraction that keeps both non-empty"
        )
    return Subset(train, keep), Subset(_unaugmented(train), sorted(val))
