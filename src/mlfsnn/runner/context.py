"""The run's context: device, precision, seeding, this rank's loaders and the progress display."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from ..data import loading
from ..errors import ConfigError

__all__ = ["AMP_DTYPES", "Context", "format_row", "resolve_device", "seed_everything"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Context:
    """Where and how this process computes: device, precision, T, and its place in a DDP job."""

    cfg: DictConfig
    device: torch.device
    time_steps: int
    static: bool = True  # samples are images repeated over T (else frames [T, C, H, W])
    rank: int = 0
    world_size: int = 1

    @classmethod
    def create(cls, cfg: DictConfig) -> Context:
        return cls(cfg=cfg, device=resolve_device(cfg.trainer.device), time_steps=cfg.time_steps)

    @property
    def main_rank(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AMP_DTYPES.get(self.cfg.trainer.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def to_model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` -> ``[T, B, C, H, W]`` (a view); frames ``[B, T, ...]`` -> time first."""
        x = x.to(self.device, non_blocking=True)
        if self.static:
            return x.unsqueeze(0).expand(self.time_steps, *x.shape)
        return x.transpose(0, 1)

    @property
    def local_batch_size(self) -> int:
        batch = self.cfg.trainer.batch_size
        if batch % self.world_size:
            raise ConfigError(
                f"trainer.batch_size={batch} is invalid: the global batch must divide by the "
                f"{self.world_size} processes"
            )
        return batch // self.world_size

    @property
    def pin_memory(self) -> bool:
        pin = self.cfg.trainer.pin_memory
        return self.device.type == "cuda" if pin == "auto" else bool(pin)

    def train_loader(self, ds: Dataset, epoch: int, skip_batches: int = 0) -> DataLoader:
        """This rank's batches of ``epoch``; the order depends only on (seed, epoch)."""
        tr = self.cfg.trainer
        return loading.train_loader(
            ds,
            batch_size=self.local_batch_size,
            seed=tr.seed,
            epoch=epoch,
            rank=self.rank,
            world=self.world_size,
            skip_batches=skip_batches,
            num_workers=tr.num_workers,
            pin_memory=self.pin_memory,
        )

    def test_loader(self, ds: Dataset) -> DataLoader:
        tr = self.cfg.trainer
        return loading.test_loader(
            ds,
            batch_size=tr.eval_batch_size or self.local_batch_size,
            rank=self.rank,
            world=self.world_size,
            num_workers=tr.num_workers,
            pin_memory=self.pin_memory,
        )

    def progress(self, loader: Iterable, desc: str, total: int | None = None) -> Iterable:
        """A tqdm bar on rank 0 when stderr is a terminal; the plain loader otherwise."""
        if not self.cfg.trainer.progress or self.rank != 0 or not sys.stderr.isatty():
            return loader
        from tqdm import tqdm

        return tqdm(loader, desc=desc, total=total, leave=False, dynamic_ncols=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} is invalid: CUDA is not available here (use cpu or auto)")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: the switch is process-wide. warn_only, since some CUDA backward kernels (adaptive
    # average pooling) have no deterministic version; CPU runs are bit-identical either way.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic  # autotuned convolutions unless reproducible


def format_row(row: dict[str, Any]) -> str:
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "train_samples_per_s", "epoch_time_s")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float)))
