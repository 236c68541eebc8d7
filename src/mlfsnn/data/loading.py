"""Seeded samplers and loaders: the data order depends only on (seed, epoch), never on workers.

That is what makes a resumed run (even one stopped mid-epoch) write the same metrics as an
uninterrupted one, and runs reproducible across ``num_workers``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

__all__ = ["EpochSampler", "SeededSamples", "test_loader", "train_loader"]


class EpochSampler(Sampler[int]):
    """This rank's share of a permutation that depends only on (seed, epoch), minus ``skip`` samples.

    Padding repeats the first indices so every rank gets the same count (as DistributedSampler).
    Skipping lets a run resumed mid-epoch see exactly the batches it had not seen yet.
    """

    def __init__(self, n: int, seed: int, epoch: int, rank: int = 0, world: int = 1, skip: int = 0) -> None:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        total = -(-n // world) * world
        perm += perm[: total - n]
        self.indices = perm[rank::world][skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededSamples(Dataset):
    """Sample ``i`` of epoch ``e`` draws the same random augmentation whichever worker loads it."""

    def __init__(self, ds: Dataset, seed: int, epoch: int) -> None:
        self.ds, self.seed, self.epoch = ds, seed, epoch

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % 2**62)
        return self.ds[i]


def _ignore_sigint(_: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops them after its checkpoint
    (a terminal sends SIGINT to the whole process group: a worker that died of it would end the epoch)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_loader(
    ds: Dataset,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    skip_batches: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """This rank's batches of ``epoch`` (``batch_size`` is per rank), after ``skip_batches``."""
    sampler = EpochSampler(len(ds), seed, epoch, rank, world, skip_batches * batch_size)  # type: ignore[arg-type]
    return DataLoader(
        SeededSamples(ds, seed, epoch),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_sigint if num_workers else None,
    )


def test_loader(
    ds: Dataset,
    *,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """This rank's share of an evaluation set (no padding, so the reduced counts stay exact)."""
    if world > 1:
        ds = Subset(ds, range(rank, len(ds), world))  # type: ignore[arg-type]
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_ignore_sigint if num_workers else None,
    )
