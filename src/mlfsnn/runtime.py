"""The pieces the training loop is assembled from: device, precision, seeding, loaders, builders."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataInfo
from .distributed import all_reduce_sum
from .observe import NeuronMonitor, SynapticOps
from .resnet import SpikingResNet, spiking_resnet

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Context:
    cfg: DictConfig
    device: torch.device
    time_steps: int
    static: bool = True
    rank: int = 0
    world_size: int = 1

    @classmethod
    def create(cls, cfg: DictConfig) -> Context:
        return cls(cfg=cfg, device=resolve_device(cfg.trainer.device), time_steps=cfg.time_steps)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AMP_DTYPES.get(self.cfg.trainer.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)


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


def to_model_input(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Images ``[B, C, H, W]`` -> ``[T, B, C, H, W]`` (a view); frames ``[B, T, ...]`` -> time first."""
    x = x.to(ctx.device, non_blocking=True)
    if ctx.static:
        return x.unsqueeze(0).expand(ctx.time_steps, *x.shape)
    return x.transpose(0, 1)


def _pin(ctx: Context) -> bool:
    pin = ctx.cfg.trainer.pin_memory
    return ctx.device.type == "cuda" if pin == "auto" else bool(pin)


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
    """Sample ``i`` of epoch ``e`` draws the same random augmentation whichever worker loads it.

    That makes runs reproducible across ``num_workers`` and mid-epoch resumes exact.
    """

    def __init__(self, ds: Dataset, seed: int, epoch: int) -> None:
        self.ds, self.seed, self.epoch = ds, seed, epoch

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i) % 2**62)
        return self.ds[i]


def local_batch_size(ctx: Context) -> int:
    batch = ctx.cfg.trainer.batch_size
    if batch % ctx.world_size:
        raise ConfigError(
            f"trainer.batch_size={batch} is invalid: the global batch must divide by the "
            f"{ctx.world_size} processes"
        )
    return batch // ctx.world_size


def train_loader(ds: Dataset, ctx: Context, epoch: int, skip_batches: int = 0) -> DataLoader:
    """Batches of this rank for ``epoch``; the order depends only on (seed, epoch)."""
    tr = ctx.cfg.trainer
    batch = local_batch_size(ctx)
    sampler = EpochSampler(len(ds), tr.seed, epoch, ctx.rank, ctx.world_size, skip_batches * batch)
    return DataLoader(
        SeededSamples(ds, tr.seed, epoch),
        batch_size=batch,
        sampler=sampler,
        num_workers=tr.num_workers,
        pin_memory=_pin(ctx),
    )


def test_loader(ds: Dataset, ctx: Context) -> DataLoader:
    """This rank's share of the test set (no padding: the reduced counts stay exact)."""
    tr = ctx.cfg.trainer
    if ctx.world_size > 1:
        ds = Subset(ds, range(ctx.rank, len(ds), ctx.world_size))  # type: ignore[arg-type]
    return DataLoader(
        ds,
        batch_size=tr.eval_batch_size or local_batch_size(ctx),
        shuffle=False,
        num_workers=tr.num_workers,
        pin_memory=_pin(ctx),
        persistent_workers=tr.num_workers > 0,
    )


def build_model(cfg: DictConfig, info: DataInfo) -> SpikingResNet:
    m = cfg.model
    return spiking_resnet(
        depth=m.depth,
        widths=tuple(m.widths),
        in_channels=info.in_channels,
        num_classes=info.num_classes,
        block=m.block,
        neuron=dict(cfg.neuron),
        input_norm=m.input_norm,
        shortcut_neuron=m.shortcut_neuron,
    )


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
        )
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    s = cfg.scheduler
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.trainer.epochs, eta_min=s.eta_min
        )
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def training_model(model: nn.Module, ctx: Context) -> nn.Module:
    """The module the training loop calls: channels-last weights, DDP and torch.compile as configured.

    Evaluation and checkpoints use the plain ``model``; all wrappers share its parameters.
    """
    tr = ctx.cfg.trainer
    if tr.channels_last:  # convolutions on the folded [T*B, C, H, W] tensors; pays off on CUDA
        model.to(memory_format=torch.channels_last)
    wrapped = wrap_data_parallel(model, ctx)
    if tr.compile:
        wrapped = torch.compile(wrapped, dynamic=False)  # static shapes: a last partial batch recompiles once
    return wrapped


def wrap_data_parallel(model: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel under torchrun (and synchronised tdBN with ``trainer.sync_bn``)."""
    if ctx.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    from .distributed import enable_sync_tdbn

    if ctx.cfg.trainer.get("sync_bn", False):
        enable_sync_tdbn(model)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def reduce_observations(monitor: NeuronMonitor, sops: SynapticOps, ctx: Context) -> None:
    """Sum every rank's neuron statistics and SOPs into each rank's monitors (no-op on one process)."""
    if ctx.world_size <= 1:
        return
    names = list(monitor.stats)
    values = []
    for n in names:
        st = monitor.stats[n]
        values += [float(st.spikes), st.neuron_steps, float(st.dormant), st.units, st.samples]
    values += [float(v) for v in sops.sops.values()] + [sops.samples]
    values = all_reduce_sum(values, ctx.device)
    for i, n in enumerate(names):
        st = monitor.stats[n]
        st.spikes, st.neuron_steps, st.dormant, st.units, st.samples = values[5 * i : 5 * i + 5]
    rest = values[5 * len(names) :]
    sops.sops = dict(zip(sops.sops, rest[:-1], strict=True))
    sops.samples = int(rest[-1])


# Keys whose change makes a checkpoint meaningless for this run (shapes, data, the neuron itself).
RESUME_KEYS = ("dataset.name", "model", "neuron", "time_steps", "optimizer.name", "scheduler.name")


def check_resume_compatible(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    def pick(cfg: dict[str, Any], key: str) -> Any:
        for part in key.split("."):
            cfg = cfg.get(part, {}) if isinstance(cfg, dict) else None
        return cfg

    def flat(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                out.update(flat(v, f"{prefix}.{k}"))
            return out
        return {prefix: value}

    diffs = []
    for key in RESUME_KEYS:
        a, b = flat(pick(old, key), key), flat(pick(new, key), key)
        diffs += [
            f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
        ]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: the config differs in {'; '.join(diffs)}")


def progress(loader: Iterable, ctx: Context, desc: str) -> Iterable:
    if not ctx.cfg.trainer.progress or ctx.rank != 0 or not sys.stderr.isatty():
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def format_row(row: dict[str, Any]) -> str:
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "train_samples_per_s", "epoch_time_s")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float)))
