"""The loggers a run chose (``logger=[tensorboard,wandb]``, configs/logger/), driven as one.

``metrics.jsonl``, ``summary.json`` and ``train.log`` are the run's own record and are written
whatever is chosen (:mod:`.outputs`); the loggers are views of it for other tools:

* ``wandb``: :class:`~.outputs.WandbLogger` (offline unless asked), the default;
* ``tensorboard``: :class:`~.tensorboard.TensorBoardLogger`, ``<run dir>/tensorboard/``;
* ``csv``: :class:`CSVLogger`, ``<run dir>/csv/metrics.csv`` (the rows of metrics.jsonl) and
  ``csv/hparams.yaml`` (the resolved config).

A logger is on when its ``logger.<name>`` block is in the config and its ``enabled`` is true, so
``logger.wandb.enabled=false`` keeps working. The top-level ``tags`` reach every logger: wandb's run
tags (after the chosen presets' ``experiment=...`` tags), a ``tags`` text and HParams entry in
TensorBoard, and the config of csv/hparams.yaml and summary.json.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from ..errors import ConfigError, UserError
from ..files import LinkRefused, atomic_write_text, ensure_dir, os_reason
from .outputs import WandbLogger, wandb_defaults
from .tensorboard import TensorBoardLogger, hparams_of

__all__ = ["NAMES", "CSVLogger", "Loggers", "chosen_loggers", "flat_row", "launch_overrides"]

log = logging.getLogger("mlfsnn")

NAMES = ("csv", "tensorboard", "wandb")
_PRESETS = ("experiment", "variant", "debug")
# Command-line keys that change where or how a run is executed or shown, never its numbers: not HParams.
_NOT_HPARAMS = (
    "logger",
    "paths",
    "print_config",
    "tags",
    "dataset.root",
    "dataset.cache_dir",
    "trainer.progress",
    "trainer.num_workers",
    "trainer.pin_memory",
    "trainer.device",
    "trainer.resume",
    "trainer.overwrite",
    "trainer.dist_timeout_s",
)


def chosen_loggers(cfg: Any) -> dict[str, Any]:
    """``{name: config}`` of the loggers ``cfg`` turns on (none when ``logger`` is absent or empty)."""
    node = cfg.get("logger")
    if not node:
        return {}
    return {name: node[name] for name in NAMES if name in node and node[name] and node[name].get("enabled")}


def launch_overrides() -> tuple[list[str], dict[str, str]]:
    """The config keys set on this launch's command line and the presets / groups chosen there.

    Read from Hydra (``hydra.overrides.task``, ``hydra.runtime.choices``); nothing outside Hydra.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], {}
    hc = HydraConfig.get()
    choices = dict(hc.runtime.choices)
    keys, chosen = [], {}
    for override in hc.overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra") or any(key == k or key.startswith(k + ".") for k in _NOT_HPARAMS):
            continue
        if key in choices:
            chosen[key] = str(choices[key])
        else:
            keys.append(key)
    for preset in _PRESETS:
        if choices.get(preset):
            chosen[preset] = str(choices[preset])
    return keys, chosen


def flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row with nested per-layer dicts flattened (``firing_rate/sn1``)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Mapping):
            out.update({f"{key}/{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""  # metrics.jsonl writes non-finite numbers as null
    return value


class CSVLogger:
    """``csv/metrics.csv``: one row per epoch, the rows of metrics.jsonl, columns in order of first
    appearance (an epoch without evaluation leaves its test cells empty). The whole file is
    rewritten atomically at each epoch from the run's history, so a resumed run's file drops the
    rows logged after its checkpoint, as metrics.jsonl does."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]], resolved: Mapping[str, Any]) -> None:
        try:
            folder = ensure_dir(run_dir / "csv")
        except LinkRefused as exc:
            raise ConfigError(f"logger=csv: {exc}") from None
        self.path = folder / "metrics.csv"
        self.rows = [flat_row(r) for r in history]
        self._write(folder / "hparams.yaml", yaml.safe_dump(dict(resolved), sort_keys=False))
        self._write(self.path, self._text())

    def _text(self) -> str:
        columns: dict[str, None] = {}
        for row in self.rows:
            columns.update(dict.fromkeys(row))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        return out.getvalue()

    @staticmethod
    def _write(path: Path, text: str) -> None:
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {os_reason(exc, path)}") from None

    def log(self, row: Mapping[str, Any], step: int) -> None:
        self.rows.append(flat_row(row))
        self._write(self.path, self._text())

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        pass


class Loggers:
    """Every logger of a run as one: ``log`` each epoch's row, ``finish`` with the summary.

    ``wandb`` is always a :class:`~.outputs.WandbLogger` (a no-op when off): checkpoints carry its
    run id and identity, so that a resumed run continues its wandb run and snn-eval joins its group.
    """

    def __init__(self, wandb: WandbLogger, others: list[Any] | None = None) -> None:
        self.wandb = wandb
        self.others = list(others or [])

    @classmethod
    def open(
        cls, cfg: DictConfig, run_dir: Path, resolved: dict[str, Any], state: Any, main: bool
    ) -> Loggers:
        """The loggers ``cfg`` chose, on rank 0 (``main``); none on the other ranks.

        ``state`` is the run's :class:`~.state.RunState`: a resumed run continues its wandb run
        (``state.wandb_id``, updated here) and its TensorBoard files from epoch ``state.epoch + 1``.
        """
        chosen = chosen_loggers(cfg) if main else {}
        defaults = wandb_defaults(run_dir)  # job_type train; one group per multirun, its sweep directory
        tags = [str(t) for t in cfg.get("tags") or []]
        wandb = WandbLogger(
            chosen.get("wandb"),
            run_dir,
            resolved,
            cfg.name,
            state.wandb_id,
            group=defaults["group"],
            tags=[*defaults["tags"], *tags],
        )
        state.wandb_id = wandb.run_id  # checkpoints carry it: a resumed run continues this wandb run
        others: list[Any] = []
        if "tensorboard" in chosen:
            keys, choices = launch_overrides()
            wanted = [str(k) for k in chosen["tensorboard"].get("hparams") or []]
            hparams = hparams_of(resolved, wanted, keys, choices)
            others.append(TensorBoardLogger(run_dir, hparams, state.epoch + 1, tags))
        if "csv" in chosen:
            others.append(CSVLogger(run_dir, state.history, resolved))
        if chosen:
            log.info("loggers: %s", ", ".join(chosen))
        return cls(wandb, others)

    @property
    def names(self) -> list[str]:
        found = ["wandb"] if self.wandb.run is not None else []
        for other in self.others:
            found.append("tensorboard" if isinstance(other, TensorBoardLogger) else "csv")
        return sorted(found)

    def log(self, row: dict[str, Any], step: int) -> None:
        self.wandb.log(row, step=step)
        for other in self.others:
            other.log(row, step)

    def finish(self, summary: dict[str, Any], status: str) -> None:
        """Close every logger; TensorBoard adds the HParams view unless the run stopped to be resumed."""
        self.wandb.finish(summary, 0 if status == "ok" else 1)
        for other in self.others:
            other.finish(summary, status)
        self.others = []
