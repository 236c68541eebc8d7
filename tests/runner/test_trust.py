"""No run loses or mixes work, and every mistake is one line (exit 2) that leaves files untouched."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mlfsnn.runner.loop as loop_module
from mlfsnn.errors import CheckpointError, ConfigError
from mlfsnn.runner.checkpoint import load_checkpoint
from mlfsnn.runner.trainer import train
from runner_utils import TINY, compose_cfg, one_line_error, read_metrics, sigterm_at_step

BIN = Path(sys.executable).parent
ONE = [*TINY, "trainer.epochs=1"]


def _run(run_dir: Path, *extra: str) -> dict:
    return train(compose_cfg([*ONE, *extra]), run_dir)


def _cli(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, **kw)


def _train_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _cli([str(BIN / "snn-train"), *ONE, *args], cwd)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with a hash of its bytes (the lock file aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".mlfsnn.lock"
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run made through the CLI (so it has .hydra/ and train.log too)."""
    cwd = tmp_path_factory.mktemp("finished")
    proc = _train_cli(cwd, "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd


# --- 1. a directory that holds a run is never overwritten -------------------------------------------


def test_rerun_into_a_finished_run_is_refused_and_changes_nothing(finished: Path) -> None:
    before = _snapshot(finished / "run")
    proc = _train_cli(finished, "hydra.run.dir=run")
    one_line_error(proc, "already holds a run", "trainer.resume=auto", "trainer.overwrite=true")
    assert _snapshot(finished / "run") == before


def test_overwrite_moves_the_old_run_aside(tmp_path: Path) -> None:
    assert _train_cli(tmp_path, "hydra.run.dir=run").returncode == 0
    old = _snapshot(tmp_path / "run")
    proc = _train_cli(tmp_path, "hydra.run.dir=run", "trainer.overwrite=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (replaced,) = (tmp_path / "run").glob("replaced-*")
    assert _snapshot(replaced) == {k: v for k, v in old.items()}
    assert (tmp_path / "run" / "summary.json").is_file()


# --- 2. one writer per run directory; default directories are unique -----------------------------


def test_a_second_process_is_refused_while_the_first_holds_the_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from mlfsnn.runner.rundir import lock_run_dir;"
            "lock_run_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = _train_cli(tmp_path, "hydra.run.dir=run")
        one_line_error(proc, "in use by another process", f"pid {holder.pid}")
        assert sorted(p.name for p in run.iterdir()) == [".mlfsnn.lock"]  # Hydra wrote nothing there
    finally:
        holder.kill()
        holder.wait()


def test_in_process_second_claim_is_refused(tmp_path: Path) -> None:
    from mlfsnn.runner.rundir import claim_run_dir, release_run_dir

    code = (
        "import sys; from pathlib import Path; from mlfsnn.runner.rundir import claim_run_dir\n"
        "try:\n    claim_run_dir(Path(sys.argv[1]), None, False)\nexcept Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    claim_run_dir(tmp_path, None, False)
    try:
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert out.stdout.startswith("ConfigError") and "in use by another process" in out.stdout
    finally:
        release_run_dir(tmp_path)


def test_default_run_directories_differ_for_launches_in_the_same_second() -> None:
    from omegaconf import OmegaConf

    from mlfsnn.runner.preflight import register_resolvers

    register_resolvers()
    dirs = set()
    for _ in range(5):
        cfg = compose_cfg(ONE, return_hydra_config=True)
        dirs.add(OmegaConf.select(cfg, "hydra.run.dir"))
    assert len(dirs) == 5


# --- 3. the launcher's SIGTERM handler is called after the checkpoint -----------------------------


def test_previous_sigterm_handler_is_chained_after_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, bool]] = []

    def launcher_handler(signum: int, frame: object) -> None:  # e.g. submitit's save-and-requeue
        calls.append((signum, (tmp_path / "checkpoints" / "last.pt").is_file()))

    old = signal.signal(signal.SIGTERM, launcher_handler)
    sigterm_at_step(monkeypatch, 2)
    try:
        summary = train(compose_cfg([*TINY, "trainer.epochs=3"]), tmp_path)
        assert summary["status"] == "preempted"
        assert calls == [(signal.SIGTERM, True)]
        assert signal.getsignal(signal.SIGTERM) is launcher_handler
    finally:
        signal.signal(signal.SIGTERM, old)


# --- 4. a resume continues the same trajectory; fine-tuning is explicit ---------------------------


def test_extending_a_cosine_run_is_refused_naming_the_key(tmp_path: Path) -> None:
    _run(tmp_path)
    with pytest.raises(CheckpointError, match=r"trainer\.epochs: 1 -> 2.*cosine.*trainer\.init_from") as err:
        _run(tmp_path, "trainer.epochs=2", "trainer.resume=auto")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "key", ["optimizer.lr=0.05", "trainer.seed=7", "dataset.subset=64", "trainer.batch_size=16"]
)
def test_any_trajectory_key_blocks_a_resume(tmp_path: Path, key: str) -> None:
    _run(tmp_path)
    with pytest.raises(CheckpointError, match=key.split("=")[0].replace(".", r"\.")):
        _run(tmp_path, key, "trainer.resume=auto")


def test_extending_a_step_schedule_continues(tmp_path: Path) -> None:
    step = ["scheduler=step", "scheduler.step_size=1"]
    _run(tmp_path, *step)
    summary = _run(tmp_path, *step, "trainer.epochs=2", "trainer.resume=auto", "trainer.num_workers=0")
    assert summary["epochs_completed"] == 2
    straight = tmp_path / "straight"
    _run(straight, *step, "trainer.epochs=2")
    assert read_metrics(tmp_path) == read_metrics(straight)


def test_init_from_starts_a_new_schedule_from_the_weights(tmp_path: Path) -> None:
    _run(tmp_path / "a")
    weights = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    summary = _run(tmp_path / "b", "trainer.epochs=2", f"trainer.init_from={tmp_path / 'a'}")
    assert summary["epochs_completed"] == 2 and len(read_metrics(tmp_path / "b")) == 2
    with pytest.raises(ConfigError, match="conflict"):
        _run(tmp_path / "c", "trainer.resume=auto", f"trainer.init_from={tmp_path / 'a'}")
    assert weights  # the source run is untouched
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["epoch"] == 1


# --- 5. fallback keeps the good backup; a checkpoint that does not fit falls back -----------------


def test_fallback_from_a_corrupt_last_keeps_the_good_backup(tmp_path: Path) -> None:
    step = ["scheduler=step", "trainer.epochs=3"]
    train(compose_cfg([*TINY, *step, "trainer.epochs=2"]), tmp_path)  # last.pt = epoch 2, prev = 1
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:2000])
    summary = train(compose_cfg([*TINY, *step, "trainer.resume=auto"]), tmp_path)
    assert summary["epochs_completed"] == 3
    assert list((tmp_path / "checkpoints").glob("last.pt.corrupt-*"))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.prev.pt")["epoch"] == 2


def test_a_checkpoint_that_does_not_fit_falls_back_or_is_one_line(tmp_path: Path) -> None:
    import torch

    from mlfsnn.runner.checkpoint import save_checkpoint

    step = ["scheduler=step"]
    train(compose_cfg([*TINY, *step, "trainer.epochs=2"]), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["model"] = {k + "_renamed": v for k, v in state["model"].items()}
    state.pop("checksum", None)
    save_checkpoint(state, last)  # a sound file (checksum included) whose weights do not fit
    summary = train(compose_cfg([*TINY, *step, "trainer.epochs=3", "trainer.resume=auto"]), tmp_path)
    assert summary["epochs_completed"] == 3  # resumed from last.prev.pt (epoch 1)
    for p in (tmp_path / "checkpoints").glob("last*.pt"):
        p.unlink()
    save_checkpoint(state, last)
    with pytest.raises(CheckpointError, match=r"last\.pt does not fit this run") as err:
        train(compose_cfg([*TINY, *step, "trainer.epochs=3", "trainer.resume=auto"]), tmp_path)
    assert "\n" not in str(err.value)


# --- 6. flipped bits are caught ----------------------------------------------------------------------


def test_snn_eval_refuses_a_checkpoint_with_a_flipped_weight(finished: Path, tmp_path: Path) -> None:
    import torch

    src = finished / "run" / "checkpoints" / "best.pt"
    bad = tmp_path / "best.pt"
    data = bytearray(src.read_bytes())
    state = torch.load(src, weights_only=True)
    w = next(v for k, v in state["model"].items() if k.endswith("conv1.weight"))
    at = data.find(w.numpy().tobytes()[:64])
    assert at > 0
    data[at + 3] ^= 0x10
    bad.write_bytes(bytes(data))
    torch.load(bad, weights_only=True)  # torch itself does not notice
    proc = _cli([str(BIN / "snn-eval"), f"checkpoint={bad}", f"out={tmp_path / 'e.json'}"], tmp_path)
    one_line_error(proc, str(bad), "corrupt")
    assert not (tmp_path / "e.json").exists()


# --- 7. every output location is checked before any work -------------------------------------------


def test_unusable_checkpoint_folder_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("a file where the folder should be")
    proc = _train_cli(tmp_path, "hydra.run.dir=run")
    one_line_error(proc, "checkpoints")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_snn_eval_checks_out_first_and_prints_before_writing(finished: Path, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file")
    args = [str(BIN / "snn-eval"), f"checkpoint={finished / 'run'}"]
    one_line_error(_cli([*args, f"out={tmp_path / 'blocker' / 'e.json'}"], tmp_path), "blocker")
    code = (
        "import sys, errno, mlfsnn.runner.evaluate as e\n"
        "def boom(*a, **k):\n    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "e.write_json = boom\nfrom mlfsnn.cli.eval import main\nmain(sys.argv[1:])\n"
    )
    proc = _cli(
        [sys.executable, "-c", code, f"checkpoint={finished / 'run'}", f"out={tmp_path / 'e.json'}"], tmp_path
    )
    assert proc.returncode == 2 and '"test_acc"' in proc.stdout  # the result was printed first
    assert "No space left" in proc.stderr and "Traceback" not in proc.stderr


# --- 8. leftovers of killed writers are cleaned at start -------------------------------------------


def test_stale_temporaries_are_removed_at_start(tmp_path: Path) -> None:
    step = ["scheduler=step"]
    _run(tmp_path, *step)
    stale = [tmp_path / "checkpoints" / ".best.pt.abc123xy.tmp", tmp_path / ".summary.json.x1y2_9zq.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    _run(tmp_path, *step, "trainer.epochs=2", "trainer.resume=auto")
    assert not any(p.exists() for p in stale)


# --- mistakes: one line, exit 2, nothing created ----------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "needles"),
    [
        ("trainer.epoch=3", ["trainer.epoch", "did you mean trainer.epochs"]),
        ("+trainer.epoch=3", ["trainer.epoch", "did you mean trainer.epochs"]),
        ("+experiment=foo", ["experiment=foo", "digits_sweep", "cifar10"]),
        ("dataset=cifar", ["cifar10_dvs"]),
        ("time_steps=100000", ["cannot fit", "GiB", "time_steps"]),
        ("model.depth=21", ["model.depth=21", "6n+2"]),
    ],
)
def test_mistakes_are_one_line_and_create_nothing(tmp_path: Path, arg: str, needles: list[str]) -> None:
    proc = _cli([str(BIN / "snn-train"), *TINY, arg], tmp_path)
    one_line_error(proc, *needles)
    assert list(tmp_path.iterdir()) == []


def test_run_dir_under_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    proc = _train_cli(tmp_path, "hydra.run.dir=f/run")
    one_line_error(proc, "f/run")


def test_data_error_after_hydra_started_leaves_no_directory(tmp_path: Path) -> None:
    proc = _cli(
        [
            str(BIN / "snn-train"),
            "dataset.root=" + str(tmp_path / "none"),
            "dataset.download=false",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    one_line_error(proc, "cifar-10-batches-py")
    assert not (tmp_path / "run").exists()


def test_a_sweep_with_one_bad_point_runs_nothing(tmp_path: Path) -> None:
    for values in ("8,21", "21,8"):
        proc = _cli([str(BIN / "snn-train"), "-m", *TINY, f"model.depth={values}"], tmp_path)
        one_line_error(proc, "sweep point", "model.depth=21", "nothing was run")
        assert list(tmp_path.iterdir()) == []


def test_snn_eval_refuses_an_unknown_override_and_keeps_eval_json(finished: Path) -> None:
    args = [str(BIN / "snn-eval"), f"checkpoint={finished / 'run'}"]
    assert _cli(args, finished).returncode == 0
    before = (finished / "run" / "eval.json").read_bytes()
    one_line_error(_cli([*args, "tme_steps=8"], finished), "tme_steps", "did you mean time_steps")
    assert (finished / "run" / "eval.json").read_bytes() == before


def test_nan_message_names_a_checkpoint_only_when_one_exists(tmp_path: Path, monkeypatch) -> None:
    import torch

    real = torch.nn.functional.cross_entropy

    def nan_in_training(logits, target, *args, **kwargs):
        loss = real(logits, target, *args, **kwargs)
        return loss if kwargs.get("reduction") == "sum" else loss * float("nan")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_in_training)
    with pytest.raises(SystemExit):
        _run(tmp_path)
    log = (tmp_path / "train.log").read_text()
    assert "no checkpoint was written yet" in log and "kept:" not in log


def test_fp16_on_cpu_warns_and_suggests_bf16(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="bf16"):
        _run(tmp_path, "trainer.precision=fp16", "trainer.max_steps=1")


# --- smaller items ---------------------------------------------------------------------------------


def test_resumed_epoch_time_agrees_with_its_throughput(tmp_path: Path, monkeypatch) -> None:
    real = loop_module._flush
    # the 0.5 s after step 1 is training time before the stop: it must count in the resumed epoch
    sigterm_at_step(monkeypatch, 2, sleep_after_first=0.5)
    _run(tmp_path)
    monkeypatch.setattr(loop_module, "_flush", real)
    _run(tmp_path, "trainer.resume=auto")
    (row,) = read_metrics(tmp_path, drop_timing=False)
    train_time = 96 / row["train_samples_per_s"]
    assert row["epoch_time_s"] >= train_time * 0.99 and train_time > 0.5


def test_json_outputs_are_strict(tmp_path: Path) -> None:
    _run(tmp_path)

    def refuse(constant: str) -> None:
        pytest.fail(f"a JSON output holds {constant}")

    json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


# --- validation split: honest model selection (issue: laptop reproduction) -------------------------


def test_validation_split_drives_best_checkpoint_and_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    val = ["dataset.val_fraction=0.25", "scheduler=step", "trainer.epochs=3"]
    straight = train(compose_cfg([*TINY, *val]), tmp_path / "straight")
    rows = read_metrics(tmp_path / "straight")
    assert all("val_acc" in r and "val_loss" in r for r in rows)
    best = max(rows, key=lambda r: r["val_acc"])  # the first epoch reaching the best val accuracy
    assert straight["best_val_acc"] == best["val_acc"] and straight["best_val_epoch"] == best["epoch"]
    assert straight["test_acc_at_best_val"] == best["test_acc"]
    assert load_checkpoint(tmp_path / "straight" / "checkpoints" / "best.pt")["epoch"] == best["epoch"]
    # stopped after epoch 1 and resumed: the same metrics and the same selection
    train(compose_cfg([*TINY, *val, "trainer.max_steps=3"]), tmp_path / "resumed")
    resumed = train(compose_cfg([*TINY, *val, "trainer.resume=auto"]), tmp_path / "resumed")
    assert read_metrics(tmp_path / "resumed") == rows
    for key in ("best_val_acc", "best_val_epoch", "test_acc_at_best_val"):
        assert resumed[key] == straight[key]


def test_sigterm_stops_a_local_sweep_not_just_its_current_point(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(BIN / "snn-train"), "-m", *ONE, "trainer.epochs=50", "trainer.seed=1,2,3", "hydra.sweep.dir=s"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (tmp_path / "s" / "0" / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    # not 0: `snn-train -m ... && snn-report` must not report a sweep that stopped half-way
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "the sweep stops here" in stderr
    assert not (tmp_path / "s" / "1").exists()  # the next point never started
    # The signal lands mid-epoch or during an epoch's evaluation and checkpoints: either way a stop.
    assert json.loads((tmp_path / "s" / "0" / "summary.json").read_text())["status"] == "preempted"
    assert load_checkpoint(tmp_path / "s" / "0" / "checkpoints" / "last.pt")["config"]


def test_hydra_flags_with_values_pass_the_pre_check(tmp_path: Path) -> None:
    proc = _cli([str(BIN / "snn-train"), "+experiment=digits", "--cfg", "job"], tmp_path)
    assert proc.returncode == 0 and "name: digits" in proc.stdout, proc.stderr[-1000:]
    proc = _cli([str(BIN / "snn-train"), "-cn", "train", "+experiment=digits", "dataset.sizee=3"], tmp_path)
    one_line_error(proc, "did you mean dataset.size")
