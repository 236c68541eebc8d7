"""Every config composes with Hydra's compose API, and validation names the bad key."""

from __future__ import annotations

import importlib.resources

import pytest
from omegaconf import OmegaConf

from mlfsnn.errors import ConfigError
from mlfsnn.nn.resnet import PAPER_NETS
from mlfsnn.runner.config import validate
from runner_utils import compose_cfg

CONFIGS = importlib.resources.files("mlfsnn.configs")


def _options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in (CONFIGS / group).iterdir() if p.name.endswith(".yaml"))


def test_default_config_is_the_cifar10_paper_recipe() -> None:
    cfg = compose_cfg()
    validate(cfg)
    assert cfg.dataset.name == "cifar10" and cfg.time_steps == 4
    assert (cfg.model.depth, list(cfg.model.widths), cfg.model.block) == (20, [64, 128, 256], "ds")
    assert (cfg.neuron.levels, cfg.neuron.threshold, cfg.neuron.width, cfg.neuron.decay) == (
        3,
        0.6,
        1.0,
        0.25,
    )
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.1, 0.9)
    assert (cfg.scheduler.step_size, cfg.scheduler.gamma) == (40, 0.1)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.seed) == (110, 64, 1)


@pytest.mark.parametrize(
    "group", ["dataset", "model", "neuron", "optimizer", "scheduler", "trainer", "logger"]
)
def test_every_group_option_composes_and_validates(group: str) -> None:
    options = _options(group)
    assert options, group
    for option in options:
        cfg = compose_cfg([f"{group}={option}"])
        OmegaConf.resolve(cfg)
        validate(cfg)


def test_every_experiment_composes_and_validates() -> None:
    experiments = _options("experiment")
    assert {"cifar10", "digits"} <= set(experiments)
    for name in experiments:
        cfg = compose_cfg([f"+experiment={name}"])
        OmegaConf.resolve(cfg)
        validate(cfg)


def test_experiment_is_not_in_the_defaults_list() -> None:
    assert "experiment" not in compose_cfg()


def test_lif_is_mlf_with_one_level() -> None:
    lif, mlf = compose_cfg(["neuron=lif"]).neuron, compose_cfg(["neuron=mlf"]).neuron
    assert lif.levels == 1 and mlf.levels == 3
    assert {k: v for k, v in lif.items() if k != "levels"} == {k: v for k, v in mlf.items() if k != "levels"}


def test_cifar10_recipe_matches_the_paper_net() -> None:
    cfg = compose_cfg(["+experiment=cifar10"])
    net = PAPER_NETS["cifar10"]
    assert cfg.model.depth == net["depth"] and tuple(cfg.model.widths) == net["widths"]


def test_command_line_beats_the_experiment() -> None:
    cfg = compose_cfg(["+experiment=digits", "neuron=lif", "model.depth=14"])
    assert cfg.neuron.levels == 1 and cfg.model.depth == 14


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("neuron.levels=0", "neuron.levels"),
        ("neuron.levels=1.5", "neuron.levels"),
        ("neuron.width=0", "neuron.width"),
        ("neuron.decay=1.5", "neuron.decay"),
        ("model.depth=21", "model.depth"),
        ("model.depth=2", "model.depth"),
        ("model.widths=[8,8]", "model.widths"),
        ("model.block=dense", "model.block"),
        ("time_steps=0", "time_steps"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.device=tpu", "trainer.device"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.grad_clip=-1", "trainer.grad_clip"),
        ("trainer.sync_every=0", "trainer.sync_every"),
        ("trainer.sync_every=sometimes", "trainer.sync_every"),
        ("scheduler.step_size=0", "scheduler.step_size"),
        ("dataset.subset=0", "dataset.subset"),
    ],
)
def test_invalid_values_name_key_value_and_allowed(override: str, key: str) -> None:
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    value = override.split("=", 1)[1]
    assert message.startswith(f"{key}=") and "\n" not in message
    assert value.strip("[]").split(",")[0] in message
    assert "expected" in message


@pytest.mark.parametrize(
    ("launcher", "plugin"),
    [
        ("slurm", "hydra_plugins.hydra_submitit_launcher"),
        ("local_parallel", "hydra_plugins.hydra_joblib_launcher"),
    ],
)
def test_cluster_launchers_compose(launcher: str, plugin: str) -> None:
    pytest.importorskip(plugin)
    cfg = compose_cfg(["+experiment=depth_cifar10", f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert ("Slurm" in target) if launcher == "slurm" else ("Joblib" in target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.signal_delay_s > 0 and cfg.hydra.launcher.gpus_per_node == 1
