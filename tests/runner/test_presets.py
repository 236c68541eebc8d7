"""Sweep presets: each composes and expands to the documented number of jobs."""

from __future__ import annotations

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from mlfsnn.runner.config import validate
from runner_utils import compose_cfg

PRESETS = {
    "ablation_levels_cifar10": 6,
    "ablation_levels_dvs_gesture": 6,
    "ablation_levels_cifar10_dvs": 6,
    "depth_cifar10": 21,
    "digits_sweep": 4,
    "depth_digits": 32,
    "ablation_levels_digits": 16,
    "ablation_levels_digits_dvs": 8,
}


def expand(preset: str, extra: list[str] | None = None) -> list[list[str]]:
    """The job list Hydra's basic sweeper makes for `snn-train -m +experiment=PRESET EXTRA...`."""
    cfg = compose_cfg([f"+experiment={preset}"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, f"+experiment={preset}", *(extra or [])])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


@pytest.mark.parametrize(("preset", "jobs"), PRESETS.items())
def test_preset_expands_to_the_expected_jobs(preset: str, jobs: int) -> None:
    expanded = expand(preset)
    assert len(expanded) == jobs
    assert len({tuple(sorted(j)) for j in expanded}) == jobs  # all distinct
    for job in expanded:  # every job is a valid configuration
        validate(compose_cfg(job))


def test_seed_list_multiplies_a_preset() -> None:
    assert len(expand("ablation_levels_cifar10", ["trainer.seed=1,2,3"])) == 18


def test_depth_sweep_variants_set_block_and_levels() -> None:
    seen = set()
    for job in expand("depth_cifar10"):
        cfg = compose_cfg(job)
        seen.add((cfg.neuron.levels, cfg.model.block))
        assert cfg.dataset.name == "cifar10" and cfg.time_steps == 4
    assert seen == {(1, "plain"), (3, "plain"), (3, "ds")}


def test_levels_ablation_covers_k_and_block() -> None:
    cfgs = [compose_cfg(job) for job in expand("ablation_levels_cifar10")]
    combos = {(cfg.neuron.levels, cfg.model.block) for cfg in cfgs}
    assert combos == {(k, b) for k in (1, 2, 3) for b in ("ds", "plain")}


def test_laptop_presets_share_one_recipe_with_a_validation_split() -> None:
    depth = [compose_cfg(job) for job in expand("depth_digits")]
    levels = [compose_cfg(job) for job in expand("ablation_levels_digits")]
    variants = {(1, "plain"), (1, "ds"), (3, "plain"), (3, "ds")}
    assert {(c.neuron.levels, c.model.block) for c in depth} == variants
    assert {c.model.depth for c in depth} == {8, 20, 32, 44} and {c.trainer.seed for c in depth} == {1, 2}
    grid = {(k, b) for k in (1, 2, 3, 4) for b in ("ds", "plain")}
    assert {(c.neuron.levels, c.model.block) for c in levels} == grid
    recipe = {"dataset": None, "optimizer": None, "scheduler": None, "time_steps": None, "trainer": None}
    for cfg in depth + levels:  # everything but the swept keys is the same recipe
        assert cfg.dataset.val_fraction == 0.15 and list(cfg.model.widths) == [16, 32, 64]
        for key in recipe:
            value = {k: v for k, v in dict(cfg[key]).items() if k != "seed"} if key == "trainer" else cfg[key]
            recipe[key] = value if recipe[key] is None else recipe[key]
            assert value == recipe[key], key
