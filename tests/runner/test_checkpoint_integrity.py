"""Checkpoints and run outputs survive damage, refusal, full disks and kills, and say so in one line."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import mlfsnn.runner.checkpoint as checkpoint_module
import mlfsnn.runner.outputs as outputs_module
from mlfsnn.errors import UserError
from mlfsnn.runner.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_resume_state,
    quarantine,
    remove_stale_temporaries,
    resume_candidates,
    save_checkpoint,
)
from mlfsnn.runner.outputs import MetricsLog, write_json

MARK = 1234.5  # a weight value whose float32 bytes are easy to find in the file


def _state(epoch: int = 1, mark: float = MARK) -> dict[str, Any]:
    """A complete training checkpoint, as the trainer writes it (small)."""
    return {
        "model": {"w": torch.full((256,), mark), "b": torch.zeros(3)},
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
        "scheduler": {"last_epoch": epoch},
        "scaler": {},
        "epoch": epoch,
        "step": 3 * epoch,
        "best_acc": 50.0,
        "best_epoch": epoch,
        "history": [{"epoch": e, "test_acc": 50.0} for e in range(1, epoch + 1)],
        "rng": capture_rng(),
        "in_epoch": None,
        "wandb_id": None,
        "config": {"name": "t", "model": {"depth": 8}},
        "num_params": 259,
    }


def _flip_weight_byte(path: Path, mark: float = MARK) -> None:
    """Flip one byte inside the storage of the tensor filled with ``mark``, as a bad disk would."""
    data = bytearray(path.read_bytes())
    needle = torch.full((256,), mark).numpy().tobytes()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "the marked tensor must be stored once"
    data[at + 17] ^= 0x40
    path.write_bytes(bytes(data))


def _one_line_error(fn: Callable[[], Any], error: type[Exception] = CheckpointError) -> str:
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, message
    return message


# --- 1. checksums --------------------------------------------------------------------------------


def test_checksum_is_stored_and_the_loaded_state_is_what_was_saved(tmp_path: Path) -> None:
    state = _state()
    path = save_checkpoint(state, tmp_path / "last.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == 2 and re.fullmatch(r"[0-9a-f]{64}", raw["checksum"])
    assert "checksum" not in state  # the caller's dict is left alone
    loaded = load_checkpoint(path, require_training_state=True)
    assert set(loaded) == set(state) and loaded["epoch"] == 1
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    # A loaded checkpoint saved again (e.g. by a conversion script) gets a fresh, valid checksum.
    load_checkpoint(save_checkpoint(torch.load(path, weights_only=True), tmp_path / "again.pt"))


def test_a_flipped_byte_in_a_weight_is_detected_though_torch_loads_it(tmp_path: Path) -> None:
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    _flip_weight_byte(path)
    # torch does not check the zip's CRCs: the damaged file loads silently with a wrong weight.
    damaged = torch.load(path, weights_only=True)
    assert not torch.equal(damaged["model"]["w"], torch.full((256,), MARK))
    message = _one_line_error(lambda: load_checkpoint(path))
    assert message.startswith(f"checkpoint {path} is corrupt: its tensors and values do not match")


def test_a_changed_value_outside_the_tensors_is_detected(tmp_path: Path) -> None:
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    raw = torch.load(path, weights_only=True)
    raw["epoch"] = 7  # keeps the stored checksum, which covers the numbers too
    torch.save(raw, path)
    assert "is corrupt" in _one_line_error(lambda: load_checkpoint(path))


def test_a_checkpoint_from_before_checksums_still_loads(tmp_path: Path) -> None:
    torch.save(_state(), tmp_path / "old.pt")  # format 1: no "format", no "checksum"
    assert load_checkpoint(tmp_path / "old.pt", require_training_state=True)["epoch"] == 1


def test_a_checkpoint_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    torch.save({**_state(), "format": 3}, tmp_path / "new.pt")
    assert "upgrade mlfsnn" in _one_line_error(lambda: load_checkpoint(tmp_path / "new.pt"))


# --- 2. structure --------------------------------------------------------------------------------


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda s: s.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda s: s.__setitem__(key, value)


STRUCTURE_CASES = [
    (_drop("model"), False, "not an mlfsnn checkpoint: 'model' is missing"),
    (lambda s: s["model"].__setitem__("w", [1.0]), False, "'model' entry 'w' is a list, expected a tensor"),
    (_set("config", "cfg"), False, "'config' is not a dict"),
    (_drop("optimizer"), True, "not a complete mlfsnn training checkpoint: 'optimizer' is missing"),
    (lambda s: s["optimizer"].pop("param_groups"), True, "'optimizer' is a dict, expected a dict with"),
    (_set("epoch", -1), True, "'epoch' is -1, expected a non-negative integer"),
    (_set("step", True), True, "'step' is True, expected a non-negative integer"),
    (_set("best_acc", "50"), True, "'best_acc' is a str, expected a number"),
    (_set("best_epoch", 1.0), True, "'best_epoch' is 1.0, expected an integer"),
    (_set("history", [{"epoch": 1}, 3]), True, "'history' is a list, expected a list of dicts"),
    (_drop("rng"), True, "'rng' is missing"),
    (_set("in_epoch", 3), True, "'in_epoch' is 3, expected None or a dict"),
]


@pytest.mark.parametrize(("damage", "training", "expected"), STRUCTURE_CASES)
def test_an_incomplete_checkpoint_names_its_first_bad_entry(
    tmp_path: Path, damage: Callable[[dict[str, Any]], None], training: bool, expected: str
) -> None:
    state = _state()
    damage(state)
    path = save_checkpoint(state, tmp_path / "ckpt.pt")  # a sound file, checksum and all
    message = _one_line_error(lambda: load_checkpoint(path, require_training_state=training))
    assert message.startswith(f"checkpoint {path} is not ") and expected in message


def test_a_weights_only_checkpoint_loads_unless_training_state_is_required(tmp_path: Path) -> None:
    path = save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, tmp_path / "weights.pt")
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert "'optimizer' is missing" in _one_line_error(
        lambda: load_checkpoint(path, require_training_state=True)
    )


# --- 3. refused pickles ----------------------------------------------------------------------------


class Payload:
    """A class the safe unpickler has never heard of."""


@pytest.mark.parametrize(
    ("extra", "name"),
    [(os.system, f"{os.system.__module__}.system"), (Payload(), "Payload")],
    ids=["blocked-module", "unknown-class"],
)
def test_a_refused_pickle_states_torchs_reason_and_never_suggests_unsafe_loading(
    tmp_path: Path, extra: Any, name: str
) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {}, "x": extra}, path)
    with pytest.raises(Exception, match="weights_only") as raw:  # what torch itself says
        torch.load(path, weights_only=True)
    assert "weights_only` set to `False`" in str(raw.value) or "weights_only=False" in str(raw.value)
    message = _one_line_error(lambda: load_checkpoint(path))
    assert message.startswith(f"checkpoint {path} cannot be loaded safely: ")
    assert name in message and "GLOBAL" in message
    assert "weights_only" not in message and "\x1b" not in message


# --- 4. fallback keeps the good backup -----------------------------------------------------------


def _corrupt_by_flip(path: Path) -> None:
    _flip_weight_byte(path, mark=2.0)


def _corrupt_by_truncation(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _corrupt_by_missing_optimizer(path: Path) -> None:
    state = _state(epoch=2, mark=2.0)
    del state["optimizer"]
    save_checkpoint(state, path)


@pytest.mark.parametrize("corrupt", [_corrupt_by_flip, _corrupt_by_truncation, _corrupt_by_missing_optimizer])
def test_fallback_moves_the_bad_last_aside_so_the_next_save_keeps_the_backup(
    tmp_path: Path, corrupt: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    prev = tmp_path / "checkpoints" / "last.prev.pt"
    save_checkpoint(_state(epoch=1, mark=1.0), last, keep_previous=True)
    save_checkpoint(_state(epoch=2, mark=2.0), last, keep_previous=True)
    corrupt(last)
    state, path = load_resume_state("auto", tmp_path)
    assert path == prev and state["epoch"] == 1
    assert not last.exists()
    aside = list(last.parent.glob("last.pt.corrupt-*"))
    assert len(aside) == 1 and re.fullmatch(r"last\.pt\.corrupt-\d{8}-\d{6}", aside[0].name)
    assert "falling back to" in caplog.text and aside[0].name in caplog.text
    # The run continues from epoch 1 and saves epoch 2: the backup it resumed from survives.
    save_checkpoint(_state(epoch=2, mark=3.0), last, keep_previous=True)
    assert load_checkpoint(prev, require_training_state=True)["epoch"] == 1
    assert load_checkpoint(last)["model"]["w"][0] == 3.0


def test_an_explicitly_named_bad_file_is_an_error_and_stays_where_it_is(tmp_path: Path) -> None:
    path = save_checkpoint(_state(), tmp_path / "mine.pt")
    _flip_weight_byte(path)
    assert "is corrupt" in _one_line_error(lambda: load_resume_state(str(path), tmp_path))
    assert path.is_file()


def test_resume_candidates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert resume_candidates(None, run) == [] and resume_candidates("", run) == []
    run.mkdir()
    assert resume_candidates("auto", run) == []  # nothing yet: start fresh
    message = _one_line_error(lambda: resume_candidates(str(run), tmp_path))
    assert message == f"trainer.resume={str(run)!r}: no checkpoint at {run / 'checkpoints' / 'last.pt'}"
    missing = tmp_path / "nope.pt"
    assert str(missing) in _one_line_error(lambda: resume_candidates(str(missing), run))
    last = save_checkpoint(_state(), run / "checkpoints" / "last.pt")
    assert resume_candidates("auto", run) == [last]
    save_checkpoint(_state(), last, keep_previous=True)
    assert resume_candidates("auto", run) == [last, run / "checkpoints" / "last.prev.pt"]
    assert resume_candidates(str(run), tmp_path) == resume_candidates("auto", run)
    assert resume_candidates(str(last), tmp_path) == [last]


def test_quarantine_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module.time, "strftime", lambda fmt: "20240101-120000")
    taken = tmp_path / "last.pt.corrupt-20240101-120000"
    taken.write_text("an earlier corrupt file")
    bad = tmp_path / "last.pt"
    bad.write_text("bad")
    moved = quarantine(bad)
    assert moved.name == "last.pt.corrupt-20240101-120000-1" and moved.read_text() == "bad"
    assert taken.read_text() == "an earlier corrupt file" and not bad.exists()
    assert "cannot move corrupt checkpoint" in _one_line_error(lambda: quarantine(bad))


# --- 5. stale temporaries ------------------------------------------------------------------------

KILL_WRITERS = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    folder = Path(sys.argv[1])
    child = os.fork()  # before torch is imported: both processes import it on their own
    from mlfsnn.runner.checkpoint import save_checkpoint
    from mlfsnn.runner.outputs import write_json
    os.fchmod = lambda *args: os._exit(9)  # killed after writing, before the rename
    if child == 0:
        write_json(folder / "summary.json", {"a": 1})
    else:
        os.waitpid(child, 0)
        save_checkpoint({"model": {}, "config": {}}, folder / "best.pt")
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked writer")
def test_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    save_checkpoint(_state(), tmp_path / "best.pt")
    write_json(tmp_path / "summary.json", {"a": 0})
    keep = [tmp_path / n for n in ("best.pt", "summary.json", "notes.tmp", ".last.pt.tmp", ".x.short.tmp")]
    for path in keep[2:]:
        path.write_text("mine")
    done = subprocess.run([sys.executable, "-c", KILL_WRITERS, str(tmp_path)], timeout=120)
    assert done.returncode == 9
    stale = sorted(p for p in tmp_path.iterdir() if p not in keep)
    assert [re.sub(r"\.[a-z0-9_]{8}\.", ".*.", p.name) for p in stale] == [
        ".best.pt.*.tmp",
        ".summary.json.*.tmp",
    ]
    assert remove_stale_temporaries(tmp_path) == stale
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert remove_stale_temporaries(tmp_path / "absent") == []


# --- 6. permissions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)], ids=["022", "027", "077"]
)
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        save_checkpoint(_state(), tmp_path / "last.pt")
        write_json(tmp_path / "summary.json", {"a": 1})
        MetricsLog(tmp_path / "metrics.jsonl").append({"epoch": 1})
    finally:
        os.umask(old)
    for name in ("last.pt", "summary.json", "metrics.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# --- 7. full disks and unwritable folders --------------------------------------------------------


def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_a_one_line_error_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = save_checkpoint(_state(epoch=1), tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", _enospc)
    message = _one_line_error(lambda: save_checkpoint(_state(epoch=2), last, keep_previous=True))
    assert message == f"cannot write checkpoint {last}: No space left on device"
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file, no rotation
    assert load_checkpoint(last)["epoch"] == 1


def test_a_full_disk_while_writing_json_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "summary.json"
    write_json(path, {"a": 1})
    monkeypatch.setattr(outputs_module.os, "fsync", _enospc)
    message = _one_line_error(lambda: write_json(path, {"a": 2}), UserError)
    assert message == f"cannot write {path}: No space left on device"
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert json.loads(path.read_text()) == {"a": 1}


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_real_write_error_inside_torch_save_keeps_its_reason(tmp_path: Path) -> None:
    """torch turns a failed write into "unexpected pos"; the OS's reason must come through."""
    import resource

    last = save_checkpoint({"model": {}, "config": {"v": 1}}, tmp_path / "last.pt")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        state = {"model": {"w": torch.zeros(100_000)}, "config": {"v": 2}}
        message = _one_line_error(lambda: save_checkpoint(state, last))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert message == f"cannot write checkpoint {last}: File too large"
    assert sorted(tmp_path.iterdir()) == [last] and load_checkpoint(last)["config"] == {"v": 1}


def test_a_full_disk_while_logging_metrics_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsLog(path, history=[{"epoch": 1}])

    def full_disk_write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk_write)  # what the append ends in (mlfsnn.files)
    message = _one_line_error(lambda: metrics.append({"epoch": 2}), UserError)
    monkeypatch.undo()
    assert message == f"cannot write {path}: No space left on device"


def test_a_checkpoint_folder_that_is_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").write_text("not a folder")
    path = tmp_path / "checkpoints" / "last.pt"
    message = _one_line_error(lambda: save_checkpoint(_state(), path))
    assert message == f"cannot write checkpoint {path}: Not a directory ({tmp_path / 'checkpoints'})"
    assert str(path) in _one_line_error(lambda: write_json(path, {}), UserError)


# --- 8. strict JSON -------------------------------------------------------------------------------


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_outputs_never_hold_nan_or_infinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"loss": math.nan, "acc": [1.0, math.inf, {"x": -math.inf}], "t": torch.tensor([math.nan, 2.0])}
    expected = {"loss": None, "acc": [1.0, None, {"x": None}], "t": [None, 2.0]}
    write_json(tmp_path / "summary.json", row)
    assert _strict((tmp_path / "summary.json").read_text()) == expected
    log = MetricsLog(tmp_path / "metrics.jsonl", history=[row])
    log.append({"epoch": 2, **row})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [_strict(line) for line in lines] == [expected, {"epoch": 2, **expected}]
    # A value the cleaning misses fails loudly instead of writing NaN.
    monkeypatch.setattr(outputs_module, "_clean", lambda value: value)
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json(tmp_path / "other.json", {"loss": math.nan})
    with pytest.raises(ValueError, match="JSON compliant"):
        log.append({"loss": math.nan})
