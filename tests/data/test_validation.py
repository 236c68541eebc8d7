"""dataset.val_fraction: a seeded, stratified, disjoint, unaugmented split of the training set."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from mlfsnn.data import build_splits
from mlfsnn.data.validation import dataset_labels, split_validation
from mlfsnn.errors import ConfigError
from runner_utils import compose_cfg


def _toy(n_per_class: tuple[int, ...]) -> TensorDataset:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    return TensorDataset(torch.arange(len(labels)).float().unsqueeze(1), labels)


def _indices(ds: Subset) -> list[int]:
    return [int(ds[i][0].item()) for i in range(len(ds))]


def test_split_is_disjoint_complete_and_stratified() -> None:
    ds = _toy((50, 30, 20))
    train, val = split_validation(ds, 0.2, seed=0)
    a, b = set(_indices(train)), set(_indices(val))
    assert not a & b and a | b == set(range(100))
    counts = torch.bincount(dataset_labels(val), minlength=3).tolist()
    assert counts == [10, 6, 4]  # 20 % of every class


def test_same_seed_same_split_other_seed_other_split() -> None:
    ds = _toy((40, 40))
    first = _indices(split_validation(ds, 0.25, seed=3)[1])
    assert first == _indices(split_validation(ds, 0.25, seed=3)[1])
    assert first != _indices(split_validation(ds, 0.25, seed=4)[1])


def test_every_class_stays_on_both_sides_and_bad_fractions_are_refused() -> None:
    train, val = split_validation(_toy((2, 2, 30)), 0.01, seed=0)
    assert set(dataset_labels(val).tolist()) == {0, 1, 2}
    assert set(dataset_labels(train).tolist()) == {0, 1, 2}
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="val_fraction"):
            split_validation(_toy((5, 5)), bad, seed=0)


class _Augmented(Dataset):
    """A dataset whose training transform differs from its evaluation transform."""

    def __init__(self) -> None:
        self.targets = [0, 1] * 10
        self.transform = lambda i: -1.0
        self.eval_transform = lambda i: float(i)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[float, int]:
        return self.transform(i), self.targets[i]


def test_validation_samples_come_without_augmentation() -> None:
    base = _Augmented()
    train, val = split_validation(Subset(base, list(range(2, 20))), 0.25, seed=0)
    assert all(x == -1.0 for x, _ in (train[i] for i in range(len(train))))
    values = [val[i][0] for i in range(len(val))]
    assert all(v >= 2 for v in values) and len(set(values)) == len(values)  # real, unaugmented samples
    assert base.transform(0) == -1.0  # the training dataset itself is untouched


def test_build_splits_on_the_real_digits() -> None:
    cfg = compose_cfg(["+experiment=digits", "dataset.val_fraction=0.2"]).dataset
    train, val, test, info = build_splits(cfg, 4)
    assert (info.train_samples, info.val_samples, info.test_samples) == (len(train), len(val), len(test))
    assert len(train) + len(val) == 1437 and abs(len(val) - 0.2 * 1437) < 10
    no_val = build_splits(compose_cfg(["+experiment=digits"]).dataset, 4)
    assert no_val[1] is None and no_val[3].val_samples == 0
