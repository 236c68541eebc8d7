"""Checks on a composed config, before any work: one-line errors naming key, value and what is allowed.

Rules live where they are enforced: neuron and network arguments are checked by the library's own
checks (:func:`~mlfsnn.nn.neurons.check_neuron_args`, :func:`~mlfsnn.nn.resnet.check_model_args`),
optimizer and scheduler names and their keys come from the builders' tables. This module only maps
their answers to config keys.
"""

from __future__ import annotations

import importlib.util
import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..data.config_checks import check_dataset_config
from ..errors import ConfigError
from ..nn._args import ArgError
from ..nn.neurons import check_neuron_args
from ..nn.resnet import check_model_args
from .builders import OPTIMIZERS, SCHEDULERS
from .schema import LOGGERS, check_keys, known_keys, unknown_key_message

__all__ = ["ConfigError", "check_logger_packages", "check_memory", "validate"]


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _int(cfg: DictConfig, key: str, low: int, optional: bool = False) -> None:
    v = _get(cfg, key)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        _fail(key, v, f"expected an integer >= {low}" + (" or null" if optional else ""))


def _number(
    cfg: DictConfig,
    key: str,
    low: float | None = None,
    high: float | None = None,
    strict_low: bool = False,
    optional: bool = False,
) -> None:
    v = _get(cfg, key)
    if v is None and optional:
        return
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if strict_low else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        rng = []
        if low is not None:
            rng.append(f"{'>' if strict_low else '>='} {low}")
        if high is not None:
            rng.append(f"<= {high}")
        _fail(
            key,
            v,
            "expected a number" + (" " + " and ".join(rng) if rng else "") + (" or null" if optional else ""),
        )


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    v = _get(cfg, key)
    if v not in choices:
        _fail(key, v, f"expected one of {', '.join(choices)}")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid value of a composed ``train`` config."""
    try:
        _validate(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # missing keys, failed interpolations: still one line
        raise ConfigError(f"config error: {exc}".splitlines()[0]) from None


def _validate(cfg: DictConfig) -> None:
    check_keys(cfg)
    _int(cfg, "time_steps", 1)
    _library_args(cfg)
    _table(cfg, "optimizer", OPTIMIZERS)
    _number(cfg, "optimizer.lr", 0, strict_low=True)
    _number(cfg, "optimizer.weight_decay", 0)
    if _get(cfg, "optimizer.name") == "sgd":
        _number(cfg, "optimizer.momentum", 0, 1)
    _table(cfg, "scheduler", SCHEDULERS)
    if _get(cfg, "scheduler.name") == "step":
        _int(cfg, "scheduler.step_size", 1)
        _number(cfg, "scheduler.gamma", 0, strict_low=True)
    _trainer(cfg)
    for key in ("energy.e_ac_pj", "energy.e_mac_pj"):  # absent from configs stored before them
        if OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
            _number(cfg, key, 0, strict_low=True)
    _logging(cfg)
    if _get(cfg, "dataset.subset") is not None:
        _int(cfg, "dataset.subset", 1)
    if OmegaConf.select(cfg, "dataset.val_fraction", default=None) is not None:
        fraction = _get(cfg, "dataset.val_fraction")
        _number(cfg, "dataset.val_fraction", 0, 0.9)
        if fraction and OmegaConf.select(cfg, "dataset.val_seed", default=0) is not None:
            _int(cfg, "dataset.val_seed", 0)
    check_dataset_config(cfg.dataset)


_ABSENT = "__absent__"  # keys newer than a config stored in an old checkpoint are skipped


def check_logger_packages(cfg: DictConfig) -> None:
    """Refuse, before any work, an enabled logger whose package this Python cannot import (a
    ``--no-deps`` or trimmed install): one line instead of a traceback once the run has started.
    For what logs (snn-train, snn-eval), not for snn-export."""
    for name in ("tensorboard", "wandb"):
        enabled = _present(cfg, f"logger.{name}") and _get(cfg, f"logger.{name}.enabled") is True
        if enabled and not _importable(name):
            raise ConfigError(
                f"logger={name} needs the {name} package, which this Python cannot import: install it "
                f"(pip install {name}; mlfsnn's own install brings it), or log without it: "
                f"logger.{name}.enabled=false, logger=csv or logger=none"
            )


def _importable(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or a module marked unimportable
        return False


def _present(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    return not (isinstance(value, str) and value == _ABSENT)


def _logging(cfg: DictConfig) -> None:
    """The loggers (configs/logger/), ``tags`` and ``print_config``."""
    for name in LOGGERS:
        if _present(cfg, f"logger.{name}") and not isinstance(_get(cfg, f"logger.{name}.enabled"), bool):
            _fail(f"logger.{name}.enabled", _get(cfg, f"logger.{name}.enabled"), "expected true or false")
    if _present(cfg, "logger.wandb") and _get(cfg, "logger.wandb.enabled"):
        mode = _get(cfg, "logger.wandb.mode")
        if mode not in (None, "online", "offline", "disabled"):
            _fail("logger.wandb.mode", mode, "expected online, offline or disabled (or set WANDB_MODE)")
    if _present(cfg, "logger.tensorboard.hparams"):
        keys = _plain(_get(cfg, "logger.tensorboard.hparams"))
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            _fail("logger.tensorboard.hparams", keys, "expected a list of config keys such as [model.depth]")
        for key in keys:
            if key not in known_keys():
                raise ConfigError(f"logger.tensorboard.hparams: {unknown_key_message(key)}")
    if _present(cfg, "tags"):
        tags = _plain(_get(cfg, "tags"))
        scalar = (str, int, float)
        if not isinstance(tags, list) or not all(isinstance(t, scalar) and str(t).strip() for t in tags):
            _fail("tags", tags, "expected a list of labels such as [baseline,v2]")
    if _present(cfg, "print_config") and _get(cfg, "print_config") not in ("auto", True, False):
        _fail("print_config", _get(cfg, "print_config"), "expected auto, true or false")


def _debugging(cfg: DictConfig) -> None:
    """The ``trainer.*`` debugging switches (configs/debug/ presets set them)."""
    for key in ("detect_anomaly", "fast_dev_run"):
        if _present(cfg, f"trainer.{key}") and not isinstance(_get(cfg, f"trainer.{key}"), bool):
            _fail(f"trainer.{key}", _get(cfg, f"trainer.{key}"), "expected true or false")
    if _present(cfg, "trainer.stop_at_train_acc"):
        _number(cfg, "trainer.stop_at_train_acc", 0, 100, strict_low=True, optional=True)
    if _present(cfg, "trainer.profile_steps"):
        _int(cfg, "trainer.profile_steps", 1, optional=True)


def _plain(value: Any) -> Any:
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def _library_args(cfg: DictConfig) -> None:
    """The neuron and network arguments, checked by the library itself (docs/method.md §1, §4)."""
    try:
        n = cfg.neuron
        check_neuron_args(_get(cfg, "neuron.levels"), n.threshold, n.width, n.decay)
    except ArgError as exc:
        _fail(f"neuron.{exc.arg}", exc.value, f"expected {exc.allowed}")
    if not isinstance(_get(cfg, "neuron.detach_reset"), bool):
        _fail("neuron.detach_reset", _get(cfg, "neuron.detach_reset"), "expected true or false")
    try:
        m = cfg.model
        check_model_args(_get(cfg, "model.depth"), _plain(m.widths), m.block)
    except ArgError as exc:
        _fail(f"model.{exc.arg}", _plain(exc.value), f"expected {exc.allowed}")


def _table(cfg: DictConfig, group: str, table: dict[str, Any]) -> None:
    """``group.name`` must be a key of the builder's table, and every key that builder reads must exist."""
    name = _get(cfg, f"{group}.name")
    if name not in table:
        _fail(f"{group}.name", name, f"expected one of {', '.join(table)}")
    for key in table[name].keys:
        if OmegaConf.select(cfg, f"{group}.{key}", default="__missing__") == "__missing__":
            raise ConfigError(
                f"{group}.{key} is missing: {group}.name={name} needs {', '.join(table[name].keys)}"
            )


def _trainer(cfg: DictConfig) -> None:
    for key in ("epochs", "batch_size", "eval_every", "checkpoint_every"):
        _int(cfg, f"trainer.{key}", 1)
    _int(cfg, "trainer.eval_batch_size", 1, optional=True)
    _int(cfg, "trainer.max_steps", 1, optional=True)
    _int(cfg, "trainer.num_workers", 0)
    _int(cfg, "trainer.seed", 0)
    _number(cfg, "trainer.grad_clip", 0, strict_low=True, optional=True)
    device = _get(cfg, "trainer.device")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        _fail("trainer.device", device, "expected auto, cpu, cuda or cuda:N")
    _choice(cfg, "trainer.precision", ("fp32", "bf16", "fp16"))
    for key in ("deterministic", "progress", "sync_bn", "log_grad_norms", "channels_last", "compile"):
        if not isinstance(_get(cfg, f"trainer.{key}"), bool):
            _fail(f"trainer.{key}", _get(cfg, f"trainer.{key}"), "expected true or false")
    if _get(cfg, "trainer.pin_memory") not in ("auto", True, False):
        _fail("trainer.pin_memory", _get(cfg, "trainer.pin_memory"), "expected auto, true or false")
    resume = _get(cfg, "trainer.resume")
    if resume is not None and not isinstance(resume, str):
        _fail("trainer.resume", resume, "expected null, auto, a run directory or a checkpoint file")
    init_from = _get(cfg, "trainer.init_from")
    if init_from is not None and (not isinstance(init_from, str) or not init_from):
        _fail("trainer.init_from", init_from, "expected null, a run directory or a checkpoint file")
    if init_from is not None and resume:
        raise ConfigError(
            f"trainer.init_from={init_from!r} and trainer.resume={resume!r} conflict: resume continues a "
            "run's own trajectory, init_from starts a new schedule from its weights; set one"
        )
    if not isinstance(_get(cfg, "trainer.overwrite"), bool):
        _fail("trainer.overwrite", _get(cfg, "trainer.overwrite"), "expected true or false")
    _number(cfg, "trainer.dist_timeout_s", 0, strict_low=True)
    every = _get(cfg, "trainer.sync_every")
    if every != "auto" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        _fail("trainer.sync_every", every, "expected auto or an integer >= 1")
    _debugging(cfg)


def _available_bytes(device: str) -> tuple[int, str] | None:
    """Memory a run on ``device`` can use, and what it is; ``None`` when it cannot be told."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return None
        index = int(device.split(":")[1]) if ":" in device else 0
        return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index} memory"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return None


def check_memory(cfg: DictConfig, task: str = "train") -> None:
    """Refuse a config whose activations alone cannot fit, before anything is built or loaded.

    ``task`` is what will run: ``"train"``, one training step of ``trainer.batch_size`` on
    ``trainer.device`` (:func:`~mlfsnn.nn.resnet.training_activation_bytes`); ``"eval"``, one batch
    of ``trainer.eval_batch_size`` (else ``batch_size``) there, estimated alike (measured: snn-eval's
    peak grows by ~2.9 unit outputs per step and sample, the estimate counts 3); ``"export"``,
    snn-export's NIR graph in RAM (K LIF nodes per neuron, five float32 arrays each, three for IF)
    plus its check run, one sample on the CPU.
    """
    from ..nn.resnet import training_activation_bytes, unit_values

    size = OmegaConf.select(cfg, "dataset.size", default=None) or 32
    if not isinstance(size, int) or isinstance(size, bool):
        return
    steps, levels, tr = cfg.time_steps, cfg.neuron.levels, cfg.trainer
    widths, depth = tuple(cfg.model.widths), cfg.model.depth
    batch_key = "trainer.eval_batch_size" if task == "eval" and tr.eval_batch_size else "trainer.batch_size"
    batch = tr.eval_batch_size if batch_key == "trainer.eval_batch_size" else tr.batch_size
    net = f"model.depth={depth}, widths {list(widths)}, {size}x{size} input"
    if task in ("train", "eval"):
        need = training_activation_bytes(steps, batch, widths, depth, size, levels=levels)
        step = "one training step keeps" if task == "train" else "one evaluation batch needs"
        what = f"{step} at least {need / 2**30:.1f} GiB of activations ({net})"
    else:
        arrays = 5 if cfg.neuron.decay < 1 else 3
        graph = arrays * levels * sum(unit_values(widths, depth, size)) * 4
        need = graph + training_activation_bytes(steps, 1, widths, depth, size, levels=levels)
        what = (
            f"the NIR graph ({levels} LIF nodes per neuron, {arrays} float32 arrays each) and its check "
            f"run need at least {need / 2**30:.1f} GiB ({net})"
        )
    have = _available_bytes("cpu" if task == "export" else str(tr.device))
    if have is None or need <= have[0]:
        return
    where = f"the {have[1]} is {have[0] / 2**30:.1f} GiB"
    if task == "export":
        raise ConfigError(
            f"dataset.size={size} x neuron.levels={levels} x time_steps={steps} cannot be exported: {what} "
            f"and {where}; lower dataset.size, neuron.levels or time_steps"
        )
    raise ConfigError(
        f"time_steps={steps} x {batch_key}={batch} x neuron.levels={levels} cannot fit: {what} and "
        f"{where}; lower time_steps, {batch_key}, neuron.levels or dataset.size"
    )
