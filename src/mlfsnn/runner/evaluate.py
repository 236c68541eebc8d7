"""Evaluate a saved checkpoint on its test set (the work behind ``snn-eval``).

The model is rebuilt from the config stored in the checkpoint; overrides apply to that config (e.g.
another T, data root or batch size).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..data import build_datasets
from ..errors import ConfigError
from ..nn import count_parameters
from ..nn.observe import SpikeRecorder
from .builders import build_model
from .checkpoint import load_checkpoint, load_weights
from .config import check_logger_packages, check_memory, validate
from .context import Context
from .loggers import chosen_loggers
from .loop import evaluate
from .outputs import environment, log_eval_run, write_json
from .schema import GROUPS, PRESETS, check_nesting, known_keys, unknown_key_message

__all__ = ["check_writable", "default_out", "resolve_checkpoint", "run_eval", "spike_record", "write_result"]


def resolve_checkpoint(path: Path) -> Path:
    """A run directory means its ``best.pt`` (or ``last.pt`` when there is no best yet)."""
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        return best if best.is_file() else path / "checkpoints" / "last.pt"
    return path


def default_out(checkpoint: Path, out: Path | None = None, name: str = "eval.json") -> Path:
    """Where a result about ``checkpoint`` goes: beside its run (``<run dir>/<name>``) by default,
    and so does an ``out`` that is a bare file name; an ``out`` with a folder is taken as given."""
    if out is not None and (out.is_absolute() or out.parent != Path(".")):
        return out
    run_dir = checkpoint.resolve().parent.parent
    name = out.name if out is not None else name
    return run_dir / name if (run_dir / "checkpoints").is_dir() else Path(name)


def check_writable(out: Path) -> None:
    """Refuse, before any work, an ``out`` that cannot be written (nothing is created on refusal)."""
    if out.is_dir():
        raise ConfigError(f"out={out} is a directory; expected a file path such as {out / 'eval.json'}")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"out={out} cannot be written: {parent} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"out={out} cannot be written: {parent}: {exc.strerror}") from None


def _merge(cfg: Any, overrides: list[str]) -> None:
    """Apply ``key=value`` overrides to a stored config; unknown keys are refused, not added."""
    for arg in overrides:
        check_nesting(arg)  # before the YAML parser, which recurses on every level
        key = arg.partition("=")[0].lstrip("+")
        if key in GROUPS + PRESETS:  # a group is chosen at training time; the stored config keeps it
            raise ConfigError(
                f"override {arg!r} is invalid: {key} is chosen when training and kept in the run's "
                "config; set single keys instead (e.g. dataset.root=DIR)"
            )
        if key not in known_keys():
            raise ConfigError(f"override {arg!r} is invalid: {unknown_key_message(key)}")
    try:
        cfg.merge_with(OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise ConfigError(f"override {' '.join(overrides)!r} is invalid: {exc}".splitlines()[0]) from None


def load_with_config(checkpoint: Path, overrides: list[str]) -> tuple[dict[str, Any], Any]:
    """The checkpoint's state and its stored config with ``overrides`` applied, validated."""
    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    _merge(cfg, overrides)
    validate(cfg)
    return state, cfg


def run_eval(
    checkpoint: Path, overrides: list[str], out: Path | None = None, write: bool = True, plots: bool = False
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` and return the result; ``write`` also saves it to ``out``.

    ``out`` (default: the run directory's ``eval.json``) is checked for writability before any work.
    ``plots`` also records every MLF layer's spikes during the pass: the result then holds ``spikes``
    (see :func:`spike_record`) for the caller to draw (snn-eval does, with
    :mod:`mlfsnn.report.spikes`, which this layer may not import); eval.json never holds it.
    """
    out = default_out(checkpoint, out)
    check_writable(out)
    state, cfg = load_with_config(checkpoint, overrides)
    check_logger_packages(cfg)  # its eval run is logged where the training run was
    check_memory(cfg, "eval")  # before the test set is built at that size
    ctx = Context.create(cfg)
    _, test_set, info = build_datasets(cfg.dataset, cfg.time_steps)
    ctx.static = info.static
    model = build_model(cfg, info).to(ctx.device)
    load_weights(model, state["model"], f"checkpoint {checkpoint}")
    t0 = time.perf_counter()
    recorder = SpikeRecorder(model) if plots else None
    with recorder or contextlib.nullcontext():  # its hooks see the same pass the metrics come from
        metrics = evaluate(model, ctx.test_loader(test_set), ctx, readings=True)
    result = {
        "checkpoint": str(checkpoint.resolve()),
        "epoch": state.get("epoch"),
        "time_steps": cfg.time_steps,
        "overrides": overrides,
        "test_samples": info.test_samples,
        "num_params": count_parameters(model),
        **metrics,
        "eval_time_s": time.perf_counter() - t0,
        **environment(ctx.device),
        "eval_json": str(out),
    }
    wandb_id = log_eval_run(cfg, state, result, out.parent, overrides)  # when the config enables wandb
    if wandb_id:
        result["wandb_run_id"] = wandb_id  # a new run in the training run's group (see log_eval_run)
    if recorder is not None:
        result["spikes"] = spike_record(recorder, test_set)
        if "tensorboard" in chosen_loggers(cfg):  # the plots join the run's TensorBoard files
            result["tensorboard_run"] = str(out.parent)
    if write:
        write_result(result)
    return result


def spike_record(recorder: SpikeRecorder, test_set: Any) -> dict[str, Any]:
    """What the spike plots need, as plain numpy arrays: ``rasters`` (``[T, neurons]`` counts of test
    sample 0, the first the unshuffled test loader yields), ``rates`` (``[T]`` spikes per neuron per
    step over the test set), ``levels`` (the largest K), ``sample`` (a caption) and ``samples``."""
    label = int(test_set[0][1])
    rates = recorder.rates()
    return {
        "rasters": {n: r.numpy() for n, r in recorder.rasters.items()},
        "rates": {n: r.numpy() for n, r in rates.items()},
        "levels": max(recorder.levels.values(), default=1),
        "sample": f"test sample 0 (class {label})",
        "samples": len(test_set),
    }


_NOT_WRITTEN = ("eval_json", "spikes", "tensorboard_run")  # what the caller needs, not eval.json


def write_result(result: dict[str, Any]) -> Path:
    """Write ``result`` to its ``eval_json`` path (atomically)."""
    out = Path(result["eval_json"])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out={out} cannot be written: {exc.strerror}") from None
    try:
        write_json(out, {k: v for k, v in result.items() if k not in _NOT_WRITTEN})
    except OSError as exc:
        raise ConfigError(f"out={out} cannot be written: {exc.strerror or exc}") from None
    return out
