"""What a config builds: the model, the optimizer, the LR schedule and the module the loop calls.

The tables here are the single source of truth: config validation (:mod:`mlfsnn.runner.config`)
reads the same names and required keys, so a name is valid exactly when it can be built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ..data import DataInfo
from ..nn import SpikingResNet, spiking_resnet
from .context import Context

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "Spec",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "training_model",
]


@dataclass(frozen=True)
class Spec:
    """How to build one named optimizer or scheduler, and the config keys that build reads."""

    build: Callable[..., Any]
    keys: tuple[str, ...]
    uses_epochs: bool = False  # the object is sized by trainer.epochs (a longer run changes it)


def _sgd(params: Any, o: DictConfig, epochs: int) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
    )


def _adamw(params: Any, o: DictConfig, epochs: int) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))


OPTIMIZERS: dict[str, Spec] = {
    "sgd": Spec(_sgd, ("lr", "momentum", "weight_decay", "nesterov")),
    "adamw": Spec(_adamw, ("lr", "weight_decay", "betas")),
}

SCHEDULERS: dict[str, Spec] = {
    "step": Spec(
        lambda opt, s, epochs: torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma),
        ("step_size", "gamma"),
    ),
    # T_max = trainer.epochs: the schedule is sized for the whole run, stepped once per epoch.
    "cosine": Spec(
        lambda opt, s, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=epochs, eta_min=s.eta_min
        ),
        ("eta_min",),
        uses_epochs=True,
    ),
    "constant": Spec(
        lambda opt, s, epochs: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0), ()
    ),
}


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
    return OPTIMIZERS[cfg.optimizer.name].build(model.parameters(), cfg.optimizer, cfg.trainer.epochs)


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    return SCHEDULERS[cfg.scheduler.name].build(optimizer, cfg.scheduler, cfg.trainer.epochs)


def training_model(model: nn.Module, ctx: Context) -> nn.Module:
    """The module the training loop calls: channels-last weights, DDP and torch.compile as configured.

    Evaluation and checkpoints use the plain ``model``; all wrappers share its parameters.
    """
    tr = ctx.cfg.trainer
    # oneDNN in torch 2.14 corrupts the heap in the fp32 backward of a channels-last 1x1 stride-2
    # convolution (the DS-ResNet's downsampling shortcut) on some x86 CPUs (seen on AMD EPYC): keep
    # fp32 CPU runs in NCHW, in eager mode and inside torch.compile (whose layout optimisation would
    # switch to channels-last by itself).
    unsafe_layout = ctx.device.type == "cpu" and tr.precision == "fp32"
    if tr.channels_last and unsafe_layout:
        warnings.warn(
            "trainer.channels_last=true is ignored for fp32 on CPU (a oneDNN bug crashes the "
            "channels-last 1x1 stride-2 convolution backward); it pays off on CUDA",
            RuntimeWarning,
            stacklevel=2,
        )
    elif tr.channels_last:  # convolutions on the folded [T*B, C, H, W] tensors; pays off on CUDA
        model.to(memory_format=torch.channels_last)
    wrapped = _wrap_data_parallel(model, ctx)
    if tr.compile:
        if unsafe_layout:
            import torch._inductor.config as inductor_config

            inductor_config.layout_optimization = False
        wrapped = torch.compile(wrapped, dynamic=False)  # static shapes: a last partial batch recompiles once
    return wrapped


def _wrap_data_parallel(model: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel under torchrun (and synchronised tdBN with ``trainer.sync_bn``)."""
    if ctx.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    from .distributed import enable_sync_tdbn

    if ctx.cfg.trainer.get("sync_bn", False):
        enable_sync_tdbn(model)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
