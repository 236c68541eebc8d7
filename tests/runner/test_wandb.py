"""wandb that fits sweeps: one group per multirun, job types train / eval, preset tags, eval runs linked.

The offline run files are read back as wandb writes them: ``run-<id>.wandb`` is a log of protobuf
``Record`` messages in 32 KiB blocks (the LevelDB log format: a 7-byte file header, then records
with a 7-byte header each, split across blocks as FIRST / MIDDLE / LAST pieces); the ``run`` record
holds the group, job type, tags, name and config the run was started with.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from mlfsnn.runner.outputs import WandbLogger, log_eval_run, wandb_defaults
from runner_utils import TINY

BIN = Path(sys.executable).parent
_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run log"
    out, pieces, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0:  # zero padding up to the next block
            pos += left
            continue
        chunk, pos = data[pos + _HEADER : pos + _HEADER + length], pos + _HEADER + length
        pieces = chunk if kind in (_FULL, _FIRST) else pieces + chunk
        if kind in (_FULL, _LAST):
            out.append(pieces)
    return out


def _run_record(offline_dir: Path) -> Any:
    """The ``run`` record of an ``offline-run-*`` folder (group, job_type, tags, display_name, config)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = offline_dir.glob("run-*.wandb")
    for raw in _records(log):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"no run record in {log}")


def _config(run: Any) -> dict[str, Any]:
    return {item.key: json.loads(item.value_json) for item in run.config.update}


def _offline_runs(run_dir: Path) -> dict[str, Any]:
    """run id -> run record, for every offline wandb run in ``run_dir``."""
    return {r.run_id: r for r in (_run_record(d) for d in (run_dir / "wandb").glob("offline-run-*"))}


def _wandb_cfg(**kw: Any) -> Any:
    base = {"enabled": True, "project": "p", "entity": None, "group": None, "tags": [], "mode": "disabled"}
    return OmegaConf.create({**base, **kw})


def test_outside_hydra_a_run_is_its_own_group(tmp_path: Path) -> None:
    assert wandb_defaults(tmp_path) == {"group": str(tmp_path), "tags": []}


def test_wandb_is_not_imported_when_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import would raise ImportError
    logger = WandbLogger(_wandb_cfg(enabled=False), tmp_path, {}, "run", group="g", tags=["t"])
    assert logger.run is None and logger.identity is None
    cfg = OmegaConf.create({"name": "run", "logger": {"wandb": {"enabled": False}}})
    assert log_eval_run(cfg, {}, {"test_acc": 1.0}, tmp_path, []) is None


def test_a_group_set_by_the_user_wins_and_tags_add_up(tmp_path: Path) -> None:
    cfg = _wandb_cfg(group="mine", tags=["extra", "experiment=digits"])
    logger = WandbLogger(cfg, tmp_path, {}, "run", group="multirun/x", tags=["experiment=digits"])
    assert logger.identity is not None
    assert logger.identity["group"] == "mine"
    assert logger.identity["tags"] == ["experiment=digits", "extra"]
    logger.finish()


@pytest.mark.slow
def test_multirun_and_eval_runs_share_the_sweep_group(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    tiny = [a for a in TINY if a not in ("logger.wandb.enabled=false", "trainer.epochs=2")]
    cmd = [str(BIN / "snn-train"), "-m", *tiny, "trainer.epochs=1", "logger.wandb.enabled=true"]
    cmd += ["logger.wandb.tags=[mine]", "+variant=mlf_ds,lif_ds", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    train = {}
    for num, variant in ((0, "mlf_ds"), (1, "lif_ds")):
        (run,) = _offline_runs(sweep / str(num)).values()
        assert (run.run_group, run.job_type) == (str(sweep), "train")
        assert list(run.tags) == ["experiment=digits", f"variant={variant}", "mine"]
        train[num] = run

    done = subprocess.run(
        [str(BIN / "snn-eval"), f"checkpoint={sweep / '0'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _offline_runs(sweep / "0")
    (eval_id,) = set(runs) - {train[0].run_id}
    run = runs[eval_id]
    assert (run.run_group, run.job_type) == (str(sweep), "eval")
    assert run.display_name == f"{train[0].display_name}-eval" and list(run.tags) == list(train[0].tags)
    assert _config(run)["eval"]["train_run_id"] == train[0].run_id
    assert json.loads((sweep / "0" / "eval.json").read_text())["wandb_run_id"] == eval_id
