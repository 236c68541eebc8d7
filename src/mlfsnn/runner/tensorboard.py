"""TensorBoard event files of a run (``logger=tensorboard``): per-epoch scalars, HParams, eval images.

Written with ``torch.utils.tensorboard`` (the ``tensorboard`` package's protobufs and file format) into
``<run dir>/tensorboard/``, one step per epoch (the ``epoch`` of metrics.jsonl). Tags are stable:

* ``train/loss``, ``train/acc``, ``train/lr``, ``train/samples_per_s``, ``train/epoch_time_s``,
  ``train/step``; ``test/loss``, ``test/acc``; ``val/loss``, ``val/acc`` with a validation split;
* ``energy/<key>`` for the SOP and energy estimate keys of metrics.jsonl (``energy/energy_ratio``,
  ``energy/sops_per_sample``, ...);
* ``firing_rate/<layer>``, ``dormant_ratio/<layer>``, ``grad_norm/<layer>``: one per layer.

:func:`scalars` is the mapping from a metrics.jsonl row. At the end of a run (not a stop that will be
resumed) the HParams summaries are added: the config keys of ``logger.tensorboard.hparams``, those set
on the command line and the chosen presets, against ``hparams/best_test_acc``, ``hparams/final_test_acc``
and, with a validation split, ``hparams/best_val_acc`` and ``hparams/test_acc_at_best_val``; a sweep's
runs then line up in TensorBoard's HParams tab (``tensorboard --logdir <sweep dir>``).

A resumed run opens its writer with ``purge_step`` = the first epoch it will log: readers drop the
events a stopped process wrote past its checkpoint (TensorBoard's ``SessionLog.START`` rule), so no
step appears twice and the curves equal metrics.jsonl.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import LinkRefused, ensure_dir
from .resume import flat_keys

__all__ = [
    "FOLDER",
    "METRICS",
    "TensorBoardLogger",
    "add_png_images",
    "hparams_of",
    "hparams_summaries",
    "scalars",
    "tag_of",
]

FOLDER = "tensorboard"
_SPLITS = ("train", "val", "test")
_TRAIN = ("lr", "epoch_time_s", "step")  # per-epoch numbers of the training pass without a split prefix
_ENERGY = ("sops", "macs", "energy")  # keys holding one of these are the evaluation's energy estimate
# summary.json key -> HParams metric tag
METRICS = {
    "best_test_acc": "hparams/best_test_acc",
    "final_test_acc": "hparams/final_test_acc",
    "best_val_acc": "hparams/best_val_acc",
    "test_acc_at_best_val": "hparams/test_acc_at_best_val",
}


def tag_of(key: str) -> str:
    """The TensorBoard tag of a numeric metrics.jsonl key (``train_loss`` -> ``train/loss``)."""
    for split in _SPLITS:
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1 :]}"
    if key in _TRAIN:
        return f"train/{key}"
    if any(word in key for word in _ENERGY):
        return f"energy/{key}"
    return f"epoch/{key}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """``{tag: value}`` of one metrics.jsonl row: every finite number but ``epoch`` (the step), nested
    per-layer dicts as ``<key>/<layer>``; flags (``best``) and non-numbers are left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "epoch":
            continue
        if isinstance(value, Mapping):
            out.update({f"{key}/{k}": float(v) for k, v in value.items() if _number(v)})
        elif _number(value):
            out[tag_of(key)] = float(value)
    return out


def _hparam_value(value: Any) -> bool | float | str:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else str(value)
    if value is None:
        return "null"
    return str(list(value)) if isinstance(value, Sequence) else str(value)


def hparams_of(
    resolved: Mapping[str, Any], keys: Iterable[str], overridden: Iterable[str], choices: Mapping[str, str]
) -> dict[str, bool | float | str]:
    """The HParams of a run: ``keys`` (``logger.tensorboard.hparams``), then the keys ``overridden``
    on the command line, as their resolved values; then the chosen ``choices`` (``experiment``,
    ``variant``, ``debug`` and groups set on the command line) and ``tags`` (comma-separated).

    Lists become their text (``[16, 32, 64]``), ``null`` the string ``null``; a key that names a
    whole block (``dataset``) is left out.
    """
    flat = flat_keys(resolved)
    out: dict[str, bool | float | str] = {}
    for key in [*keys, *overridden]:
        if key in flat and key not in out:
            out[key] = _hparam_value(flat[key])
    for group, option in choices.items():
        out.setdefault(group, str(option))
    tags = resolved.get("tags") or []
    if tags:
        out["tags"] = ",".join(str(t) for t in tags)
    return out


def _session_status(status: str) -> int:
    from tensorboard.plugins.hparams import api_pb2

    return {
        "ok": api_pb2.STATUS_SUCCESS,
        "pruned": api_pb2.STATUS_SUCCESS,  # a pruned trial is a result, as Optuna counts it
        "preempted": api_pb2.STATUS_RUNNING,
    }.get(status, api_pb2.STATUS_FAILURE)


def open_folder(run_dir: Path) -> Path:
    """``<run dir>/tensorboard``, created; a link planted there is refused in one line."""
    from ..errors import ConfigError

    try:
        return ensure_dir(run_dir / FOLDER)
    except LinkRefused as exc:
        raise ConfigError(f"logger=tensorboard: {exc}") from None


class TensorBoardLogger:
    """One ``SummaryWriter`` for the whole run (rank 0); flushed after every epoch, so a killed run
    keeps every epoch it logged."""

    def __init__(
        self, run_dir: Path, hparams: dict[str, bool | float | str], first_epoch: int, tags: Sequence[str]
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = open_folder(run_dir)
        resumed = first_epoch > 1 or any(folder.glob("events.out.tfevents.*"))
        # purge_step: readers drop what an earlier process logged from this epoch on (it is logged again)
        self.writer = SummaryWriter(str(folder), purge_step=first_epoch if resumed else None)
        self.hparams = hparams
        self.last_epoch = first_epoch - 1
        if tags and not resumed:
            self.writer.add_text("tags", ", ".join(str(t) for t in tags), global_step=0)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()
        self.last_epoch = step

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        """The HParams view of a run that ended (not one stopped to be resumed), then close."""
        if status != "preempted" and self.hparams:
            self._write_hparams(summary, status)
        self.writer.close()

    def _write_hparams(self, summary: Mapping[str, Any], status: str) -> None:
        metrics = {tag: summary.get(key) for key, tag in METRICS.items() if _number(summary.get(key))}
        file_writer = self.writer._get_file_writer()
        step = max(self.last_epoch, 0)
        experiment, start, end = hparams_summaries(self.hparams, list(metrics), status)
        file_writer.add_summary(experiment, global_step=step)
        file_writer.add_summary(start, global_step=step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, float(value), global_step=step)
        file_writer.add_summary(end, global_step=step)
        self.writer.flush()


def hparams_summaries(
    hparams: Mapping[str, bool | float | str], metric_tags: Sequence[str], status: str
) -> tuple:
    """The HParams plugin's three summaries: the experiment (hparams and metric tags), the session's
    start (its values) and end (its status: ``ok`` / ``pruned`` success, else failure).

    Built from tensorboard's protobufs as ``torch.utils.tensorboard.summary.hparams`` does (whose
    session always ends in success, and whose booleans become numbers).
    """
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    infos = []
    for name, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value, kind = value, api_pb2.DATA_TYPE_BOOL
        elif isinstance(value, int | float):
            start.hparams[name].number_value, kind = float(value), api_pb2.DATA_TYPE_FLOAT64
        else:
            start.hparams[name].string_value, kind = str(value), api_pb2.DATA_TYPE_STRING
        infos.append(api_pb2.HParamInfo(name=name, type=kind))
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in metric_tags],
    )
    end = plugin_data_pb2.SessionEndInfo(status=_session_status(status), end_time_secs=time.time())

    def summary(tag: str, **data: Any) -> Any:
        content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
        plugin = SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
        )
        return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])

    return (
        summary(metadata.EXPERIMENT_TAG, experiment=experiment),
        summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
        summary(metadata.SESSION_END_INFO_TAG, session_end_info=end),
    )


def _png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk (bytes 16-24)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def add_png_images(run_dir: Path, images: Mapping[str, Path], step: int) -> Path:
    """Add PNG files to ``<run dir>/tensorboard`` as image summaries ``{tag: file}`` at ``step`` (the
    evaluated checkpoint's epoch), in a new event file beside the training run's; returns the folder.

    The encoded PNGs are stored as they are (TensorBoard's ``Summary.Image``), not decoded.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    folder = open_folder(run_dir)
    writer = SummaryWriter(str(folder), filename_suffix=f".eval{int(time.time())}")
    try:
        for tag, path in images.items():
            data = Path(path).read_bytes()
            width, height = _png_size(data)
            image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
            writer._get_file_writer().add_summary(
                Summary(value=[Summary.Value(tag=tag, image=image)]), global_step=step
            )
    finally:
        writer.close()
    return folder
