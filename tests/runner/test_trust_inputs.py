"""Hostile inputs (crafted checkpoints, deep overrides, absurd sizes) are one line, exit 2, at once.

Issue 18, "Trust round two": every file here is written for real (``torch.save``) and every console
script runs as a process with a timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

import mlfsnn.files as files_module
import mlfsnn.runner.config as config_module
from mlfsnn.data import DataInfo
from mlfsnn.errors import CheckpointError, ConfigError
from mlfsnn.runner.builders import build_model
from mlfsnn.runner.checkpoint import (
    capture_rng,
    checksum,
    load_checkpoint,
    load_resume_state,
    previous_path,
    save_checkpoint,
)
from mlfsnn.runner.ckpt_bounds import MAX_DEPTH, MAX_VALUES, _first_excess
from mlfsnn.runner.config import check_memory
from mlfsnn.runner.evaluate import load_with_config
from mlfsnn.runner.resume import load_init_weights
from mlfsnn.runner.schema import MAX_NESTING, check_overrides
from runner_utils import TINY, compose_cfg, one_line_error

BIN = Path(sys.executable).parent
HANG = 120  # seconds: a refusal takes a few (mostly imports); the bugs these guard against never end


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=HANG)


def _deep_save(obj: Any, path: Path) -> Path:
    """``torch.save`` of a deeply nested object: pickling recurses, so it needs a higher limit."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 50_000))
    try:
        torch.save(obj, path)
    finally:
        sys.setrecursionlimit(limit)
    return path


def _nested_list(depth: int) -> list:
    root: list = []
    node = root
    for _ in range(depth):
        node.append([])
        node = node[0]
    return root


def _nested_dict(depth: int) -> dict:
    root: dict = {}
    node = root
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return root


def _shared(levels: int, width: int = 2) -> list:
    """``levels`` levels of ``width`` references to the level below: pickle stores each level once."""
    node: list = [0]
    for _ in range(levels):
        node = [node] * width
    return node


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) TINY digits checkpoint in a run-directory layout, with optimizer state."""
    cfg = compose_cfg(TINY)
    torch.manual_seed(0)
    model = build_model(cfg, DataInfo("digits", 10, 1, (8, 8), True, 0, 0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 4, 1, 8, 8)).sum().backward()
    opt.step()
    run = tmp_path_factory.mktemp("run")
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "epoch": 1,
        "rng": capture_rng(),
    }
    save_checkpoint(state, run / "checkpoints" / "best.pt")
    return run


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files no mlfsnn version writes, each a valid weights-only pickle that loads in milliseconds."""
    folder = tmp_path_factory.mktemp("crafted")
    model = {"w": torch.zeros(2)}
    return {
        # 40 levels of sharing: 2^40 leaves to a tree walk (a recursive walk also nests 40 deep)
        "shared": _deep_save({"model": model, "config": {}, "x": _shared(40)}, folder / "shared.pt"),
        # 5 levels of 64: 10^9 leaves, shallow; format 2 with a bogus checksum, so the walk would run
        "wide": _deep_save(
            {"model": model, "config": {}, "x": _shared(5, 64), "format": 2, "checksum": "0" * 64},
            folder / "wide.pt",
        ),
        "deep_list": _deep_save({"model": model, "config": {}, "x": _nested_list(3000)}, folder / "deep.pt"),
        "deep_config": _deep_save({"model": model, "config": _nested_dict(3000)}, folder / "deep_config.pt"),
        "big_config": _deep_save(
            {"model": model, "config": {f"k{i}": i for i in range(200_000)}}, folder / "big_config.pt"
        ),
    }


# --- 1. a checkpoint's structure is bounded before anything walks it -------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["shared", "deep_list", "deep_config"])
@pytest.mark.parametrize("script", ["snn-eval", "snn-export"])
def test_crafted_checkpoints_are_one_line_in_the_clis(
    crafted: dict[str, Path], tmp_path: Path, kind: str, script: str
) -> None:
    out = tmp_path / ("x.nir" if script == "snn-export" else "e.json")
    proc = _cli([str(BIN / script), f"checkpoint={crafted[kind]}", f"out={out}"], tmp_path)
    one_line_error(proc, str(crafted[kind]), "is not an mlfsnn checkpoint", f"deeper than {MAX_DEPTH}")
    assert not out.exists()


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("shared", f"nests deeper than {MAX_DEPTH} levels"),
        ("wide", f"holds more than {MAX_VALUES:,} values"),
        ("deep_list", f"nests deeper than {MAX_DEPTH} levels"),
        ("deep_config", f"nests deeper than {MAX_DEPTH} levels"),
        ("big_config", "its config holds more than 100,000 values"),
    ],
)
def test_crafted_checkpoints_are_refused_by_every_loader(
    crafted: dict[str, Path], tmp_path: Path, kind: str, needle: str
) -> None:
    path = crafted[kind]
    for load in (
        lambda: load_checkpoint(path),
        lambda: load_init_weights(str(path), torch.nn.Linear(2, 2)),  # trainer.init_from
        lambda: load_resume_state(str(path), tmp_path),  # trainer.resume
    ):
        with pytest.raises(CheckpointError) as info:
            load()
        message = str(info.value)
        assert "\n" not in message and needle in message and str(path) in message, message


def test_real_checkpoints_are_far_inside_the_bounds(run_dir: Path) -> None:
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    # A long run: 1,000 epochs of history rows as the trainer writes them.
    state["history"] = [{f"metric_{i}": 1.0 for i in range(20)} | {"epoch": e} for e in range(1000)]
    assert _first_excess(state, MAX_VALUES // 10, MAX_DEPTH // 4) is None


def test_checksums_of_existing_checkpoints_are_unchanged() -> None:
    # The digest the checksum had before the bounds check existed: files written then still verify.
    state = {
        "model": {
            "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "b": torch.zeros(2, dtype=torch.float64),
        },
        "config": {"name": "t", "model": {"depth": 8, "widths": [4, 8, 8]}},
        "history": [{"epoch": 1, "test_acc": 50.0}],
        "rng": {"python": {"state": [1, 2, 3], "gauss": None}},
        "epoch": 1,
        "step": (3, "x"),
        "best_acc": 12.5,
        "flag": True,
    }
    assert checksum(state) == "87302a556d41d8783f7d8899218fad123552cce698dfe319421b5b7e0639a7a9"


# --- 2. last.pt exists at every moment of its rotation ---------------------------------------------


def _training_state(epoch: int) -> dict[str, Any]:
    return {"model": {"w": torch.full((64,), float(epoch))}, "config": {"name": "t"}, "epoch": epoch}


def test_rotation_never_leaves_last_pt_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(_training_state(1), last, keep_previous=True)
    first = last.read_bytes()
    real, renames = os.replace, []

    def watched(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        assert last.is_file(), f"last.pt is missing before os.replace({src}, {dst})"
        real(src, dst, *args, **kwargs)
        assert last.is_file(), f"last.pt is missing after os.replace({src}, {dst})"
        renames.append(Path(dst).name)

    monkeypatch.setattr(os, "replace", watched)
    save_checkpoint(_training_state(2), last, keep_previous=True)
    monkeypatch.undo()
    assert renames[-1] == "last.pt" and "last.prev.pt" in renames
    assert previous_path(last).read_bytes() == first
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(previous_path(last))["epoch"] == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.prev.pt", "last.pt"]  # no temp left


# --- 3. nesting depth of overrides and stored configs ----------------------------------------------


def _nested_override(key: str, depth: int) -> str:
    return f"{key}=" + "{b:" * depth + "1" + "}" * depth


@pytest.mark.slow
def test_deep_override_is_one_line_before_hydra(tmp_path: Path) -> None:
    proc = _cli([str(BIN / "snn-train"), *TINY, _nested_override("+a", 3000)], tmp_path)
    one_line_error(proc, "+a=", "3000 levels", f"at most {MAX_NESTING}")
    assert list(tmp_path.iterdir()) == []


def test_override_nesting_is_counted_outside_quotes_only() -> None:
    for raw in (_nested_override("hydra.a", 3000), "hydra." + "a." * 40 + "b=1", "model.widths=" + "[" * 40):
        with pytest.raises(ConfigError, match=f"at most {MAX_NESTING}"):
            check_overrides([raw])
    # brackets inside quotes are text; a value nested within the limit goes on to Hydra's parser
    check_overrides(["hydra.run.dir='" + "[" * 100 + "'", "model.widths=" + "[" * 20 + "4" + "]" * 20])


def test_deep_override_of_a_stored_config_is_one_line(run_dir: Path) -> None:
    with pytest.raises(ConfigError, match=f"at most {MAX_NESTING}"):
        load_with_config(run_dir / "checkpoints" / "best.pt", ["model.widths=" + "[" * 3000 + "]" * 3000])


def test_stored_config_just_inside_the_depth_bound_is_one_line(run_dir: Path, tmp_path: Path) -> None:
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    state["config"]["logger"]["extra"] = _nested_dict(MAX_DEPTH - 4)  # the deepest a checkpoint may hold
    save_checkpoint(state, tmp_path / "deep.pt")
    with pytest.raises(ConfigError, match=r"logger\.extra"):  # an unknown key, not a RecursionError
        load_with_config(tmp_path / "deep.pt", [])


# --- 6. K is part of the memory estimate ------------------------------------------------------------


@pytest.mark.slow
def test_absurd_levels_are_refused_before_any_work(tmp_path: Path) -> None:
    args = ["+experiment=digits", "neuron.levels=1000000", "logger.wandb.enabled=false", "hydra.run.dir=run"]
    proc = _cli([str(BIN / "snn-train"), *args], tmp_path)
    one_line_error(proc, "neuron.levels=1000000", "cannot fit", "GiB")
    assert list(tmp_path.iterdir()) == []


def test_levels_raise_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 GiB "available": TINY fits at K=3, not at K=50,000 (K potentials of the largest layer)
    monkeypatch.setattr(config_module, "_available_bytes", lambda device: (2 * 2**30, "available RAM"))
    check_memory(compose_cfg([*TINY, "neuron.levels=3"]))
    with pytest.raises(ConfigError, match=r"neuron.levels=50000 cannot fit: .* \d+\.\d GiB"):
        check_memory(compose_cfg([*TINY, "neuron.levels=50000"]))


# --- 7. snn-export and snn-eval check memory before they allocate -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "arg", "needle"),
    [
        ("snn-export", "time_steps=100000000", "cannot be exported"),
        ("snn-export", "dataset.size=100000", "dataset.size=100000"),
        ("snn-eval", "time_steps=100000000", "cannot fit"),
    ],
)
def test_absurd_sizes_are_refused_before_allocating(
    run_dir: Path, tmp_path: Path, script: str, arg: str, needle: str
) -> None:
    out = tmp_path / ("x.nir" if script == "snn-export" else "e.json")
    proc = _cli([str(BIN / script), f"checkpoint={run_dir}", f"out={out}", arg], tmp_path)
    one_line_error(proc, needle)
    assert not out.exists()


def test_export_memory_counts_the_graph(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlfsnn.runner.export import export_checkpoint

    monkeypatch.setattr(config_module, "_available_bytes", lambda device: (2**20, "available RAM"))
    with pytest.raises(ConfigError, match=r"cannot be exported: the NIR graph \(200 LIF nodes per neuron"):
        export_checkpoint(run_dir / "checkpoints" / "best.pt", ["neuron.levels=200"], tmp_path / "x.nir")
    assert not (tmp_path / "x.nir").exists()


def test_export_refuses_graphs_nir_cannot_check_in_time(run_dir: Path, tmp_path: Path) -> None:
    from mlfsnn.runner.export import MAX_NODES, export_checkpoint

    with pytest.raises(ConfigError, match=f"at most {MAX_NODES:,}"):
        export_checkpoint(run_dir / "checkpoints" / "best.pt", ["neuron.levels=1000"], tmp_path / "x.nir")


# --- 8. writing the .nir: atomic, never through a link, an OSError is one line ----------------------


class _OS:
    """``os`` as mlfsnn.files sees it, with ``fdopen`` replaced (the real module stays untouched)."""

    def __init__(self, fdopen: Any) -> None:
        self.fdopen = fdopen

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every file atomic_write opens fails its first write with ENOSPC, as on a full disk."""

    class Full:
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.f.close()

    monkeypatch.setattr(files_module, "os", _OS(lambda *a, **k: Full(os.fdopen(*a, **k))))
    yield


def test_export_on_a_full_disk_is_one_line(run_dir: Path, tmp_path: Path, full_disk: None) -> None:
    from mlfsnn.runner.export import export_checkpoint

    out = tmp_path / "m.nir"
    with pytest.raises(ConfigError) as info:
        export_checkpoint(run_dir / "checkpoints" / "best.pt", [], out)
    assert str(info.value) == f"out={out} cannot be written: No space left on device"
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp file


def test_export_replaces_a_link_without_writing_through_it(run_dir: Path, tmp_path: Path) -> None:
    from mlfsnn.runner.export import export_checkpoint

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "m.nir").symlink_to(target)
    export_checkpoint(run_dir / "checkpoints" / "best.pt", [], tmp_path / "m.nir")
    assert target.read_text() == "keep me" and not (tmp_path / "m.nir").is_symlink()


@pytest.mark.parametrize("arg", ["dataset=cifar10", "+experiment=digits", "model=x", "variant=mlf_ds"])
def test_snn_eval_says_a_group_is_not_switched_on_a_trained_config(arg: str) -> None:
    from mlfsnn.runner.evaluate import _merge

    cfg = OmegaConf.create({"dataset": {"name": "digits", "root": "data"}})
    with pytest.raises(ConfigError) as exc:
        _merge(cfg, [arg])
    key = arg.lstrip("+").partition("=")[0]
    assert f"{key} is chosen when training" in str(exc.value) and "dataset.root=DIR" in str(exc.value)
    _merge(cfg, ["dataset.root=/elsewhere"])  # a single key of a group is what snn-eval takes
    assert cfg.dataset.root == "/elsewhere"
