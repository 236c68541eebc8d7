"""What snn-report, the spike plots of ``snn-eval plots=true``, snn-bench and the GPU check write, against
links planted at their file names, a full disk and run files that are not UTF-8 (issue 18).

Everything here uses real files: links to files outside the output folder, a real tmpfs filled to the
last page (skipped where it cannot be mounted), and a disk-full error injected into the temp files'
writes where a subprocess is not needed. After any failure the previous files must be byte for byte
what they were and no temp file may be left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlfsnn.files
from mlfsnn.cli.report import main
from mlfsnn.errors import ReportError
from report.fakes import PNG_MAGIC, config, make_run
from runner_utils import mounted_tmpfs

WRITTEN = (
    "report.md",
    "report.csv",
    "best_trial.csv",
    "accuracy_curves.png",
    "training_curves.png",
    "accuracy_vs_depth.png",
    "firing_rate.png",
    "dormant_ratio.png",
)
SKIPPED = "accuracy_vs_levels.png"  # K never varies in the sweep below
ENOSPC = os.strerror(errno.ENOSPC)


def _snn_report(*args: Any) -> subprocess.CompletedProcess[str]:
    """The installed console script in a fresh process (``-m`` where no script is installed)."""
    script = Path(sys.executable).parent / "snn-report"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "mlfsnn.cli.report"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)


def _files(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder`` (temp files included) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A depth sweep, two seeds each (every plot but K), under an Optuna results file (best_trial.csv)."""
    root = tmp_path / "runs"
    for depth in (8, 14):
        for seed in (1, 2):
            make_run(root / f"d{depth}s{seed}", config(depth=depth, seed=seed), [30.0 + seed, 40.0 + depth])
    (root / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  model.depth: 14\nbest_value: 54.0\n"
    )
    return root


def _plant_links(out: Path, outside: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)
    targets = {}
    for name in names:
        target = outside / name
        target.write_bytes(f"precious, not {name}\n".encode())
        (out / name).symlink_to(target)
        targets[name] = target.read_bytes()
    return targets


def test_snn_report_replaces_planted_links_and_leaves_their_targets(sweep: Path, tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    before = _plant_links(out, outside, (*WRITTEN, SKIPPED))
    proc = _snn_report(sweep, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert _files(outside) == before  # no target touched
    for name in WRITTEN:
        path = out / name
        assert path.is_file() and not path.is_symlink(), name
        assert path.read_bytes().startswith(PNG_MAGIC) == name.endswith(".png"), name
    assert "## Optuna: best trial" in (out / "report.md").read_text()
    assert (out / "best_trial.csv").read_text().startswith("sweep,run,best_val_acc,model.depth\n")
    # The skipped plot's stale name is removed: the link itself, not what it pointed to.
    assert not os.path.lexists(out / SKIPPED)
    assert sorted(_files(out)) == sorted(WRITTEN)  # no temp file left


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[int], None]:
    """``disk_full(n)``: from now on, files opened for writing under tmp_path (atomic_write's temp
    files) take ``n`` more bytes in all, then fail with ENOSPC, the way a filling disk does."""
    real = os.fdopen
    left = [-1]  # -1: no limit yet

    class Filling:
        def __init__(self, f: Any) -> None:
            self._f = f

        def write(self, data: bytes) -> int:
            if left[0] >= 0 and len(data) > left[0]:
                self._f.write(bytes(data[: left[0]]))
                left[0] = 0
                raise OSError(errno.ENOSPC, ENOSPC)
            if left[0] >= 0:
                left[0] -= len(data)
            return self._f.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

        def __enter__(self) -> Filling:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real(fd, mode, *args, **kwargs)
        with contextlib.suppress(OSError):
            if "w" in mode and Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(tmp_path):
                return Filling(f)
        return f

    monkeypatch.setattr(mlfsnn.files.os, "fdopen", fdopen)
    return lambda n: left.__setitem__(0, n)


@pytest.mark.parametrize("where", ["first file", "inside report.md", "last plot"])
def test_a_full_disk_leaves_the_previous_report_whole(
    sweep: Path, tmp_path: Path, disk_full: Callable[[int], None], capsys: pytest.CaptureFixture, where: str
) -> None:
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 0
    before = _files(out)
    make_run(sweep / "d20s1", config(depth=20), [33.0, 66.0])  # the new report differs in every file
    total = sum(map(len, before.values()))
    budget = {
        "first file": 0,
        "inside report.md": len(before["report.md"]) // 2,
        # report.md, the CSVs and all but half of the last plot fit: the temp files of every other
        # file are complete on disk when the last one fails, and still none may be renamed.
        "last plot": total - len(before["dormant_ratio.png"]) // 2,
    }[where]
    disk_full(budget)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    line = re.fullmatch(rf"error: cannot write {re.escape(str(out))}/(\S+): {ENOSPC}\n", err)
    assert line, err
    failed = line.group(1)
    assert failed in WRITTEN
    if where != "last plot":
        assert failed == "report.md"
    else:
        assert failed.endswith(".png")
    assert _files(out) == before  # same names (no temp file, no plot removed), same bytes


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real filesystem that runs out of space."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` to its last byte, then give back ``leave`` bytes (a few pages)."""
    filler = disk / "filler"
    # Unbuffered: nothing is left to flush (and fail) on close.
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    os.truncate(filler, max(filler.stat().st_size - leave, 0))


def test_snn_report_on_a_real_full_tmpfs(sweep: Path, small_disk: Path) -> None:
    out = small_disk / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    before = _files(out)
    make_run(sweep / "d20s1", config(depth=20), [33.0, 66.0])
    _fill(small_disk, 16384)  # report.md (about 4 KiB) and the CSVs fit, then a plot does not
    proc = _snn_report(sweep, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/\S+\.png: {ENOSPC}\n", proc.stderr), (
        proc.stderr
    )
    assert _files(out) == before


def test_files_that_are_not_utf8_are_noted_not_a_traceback(sweep: Path, tmp_path: Path) -> None:
    # metrics.jsonl: one bad line among good ones, whose rows still count.
    metrics = sweep / "d8s1" / "metrics.jsonl"
    first, *rest = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(first + b'{"epoch": 9, "note": "caf\xe9"}\n' + b"".join(rest))
    (sweep / "d8s2" / "summary.json").write_bytes(b"\xff\xfe{}")
    # A run that never finished: its configuration would come from here.
    (sweep / "d14s1" / "summary.json").unlink()
    (sweep / "d14s1" / ".hydra" / "config.yaml").write_bytes(b"dataset:\n  name: \xc3\x28\n")
    proc = _snn_report(sweep, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    notes = {
        "d8s1": "(row 1): metrics.jsonl line 2 unreadable (not UTF-8); 2 epoch(s) in metrics.jsonl",
        "d8s2": "(row 1): no summary.json (incomplete); summary.json unreadable (not UTF-8 text: byte 0xff "
        "at offset 0); 2 epoch(s)",
        "d14s1": "(not in the table): no summary.json (incomplete); .hydra/config.yaml unreadable (not UTF-8 "
        "text: byte 0xc3 at offset 17)",
    }
    for run, note in notes.items():
        assert f"- `{run}` {note}" in md, run


def _spikes() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    rasters = {n: rng.integers(0, 4, size=(4, 50)).astype(float) for n in ("sn1", "layer1.0.sn1")}
    return rasters, {n: r.mean(axis=1) for n, r in rasters.items()}


SPIKE_PLOTS = ("eval_spike_raster.png", "eval_firing_rate_per_step.png")


def test_spike_plots_replace_planted_links(tmp_path: Path) -> None:
    from mlfsnn.report.spikes import write_spike_plots

    out, outside = tmp_path / "run", tmp_path / "outside"
    before = _plant_links(out, outside, SPIKE_PLOTS)
    written = write_spike_plots(*_spikes(), 3, out, stem="eval")
    assert [p.name for p in written] == list(SPIKE_PLOTS)
    assert _files(outside) == before
    for name in SPIKE_PLOTS:
        assert not (out / name).is_symlink() and (out / name).read_bytes().startswith(PNG_MAGIC)


def test_snn_eval_plots_on_a_full_disk_keep_the_previous_pngs(
    tmp_path: Path, disk_full: Callable[[int], None]
) -> None:
    from mlfsnn.cli.eval import draw_spikes
    from mlfsnn.report.spikes import write_spike_plots

    out = tmp_path / "run"
    write_spike_plots(*_spikes(), 3, out, stem="eval")
    before = _files(out)
    rasters, rates = _spikes()
    result = {  # what run_eval(plots=True) hands snn-eval's draw_spikes
        "eval_json": str(out / "eval.json"),
        "spikes": {"rasters": rasters, "rates": rates, "levels": 3, "sample": "x", "samples": 5},
    }
    # The raster's temp file is complete when the rate plot's fails; neither may replace its file.
    disk_full(len(before["eval_spike_raster.png"]) + len(before["eval_firing_rate_per_step.png"]) // 2)
    with pytest.raises(ReportError) as err:
        draw_spikes(result)
    assert str(err.value) == f"cannot write {out / 'eval_firing_rate_per_step.png'}: {ENOSPC}"
    assert _files(out) == before


def test_snn_bench_replaces_planted_links(tmp_path: Path) -> None:
    from mlfsnn.cli.bench import main as bench

    out, outside = tmp_path / "bench", tmp_path / "outside"
    before = _plant_links(out, outside, ("bench.json", "bench.md"))
    assert bench(["--quick", "--skip-neuron", "--skip-train", "--out", str(out)]) == 0
    assert _files(outside) == before
    assert not (out / "bench.json").is_symlink() and "machine" in json.loads((out / "bench.json").read_text())
    assert not (out / "bench.md").is_symlink() and sorted(_files(out)) == ["bench.json", "bench.md"]


def test_bench_write_on_a_full_disk_keeps_the_previous_pair(
    tmp_path: Path, disk_full: Callable[[int], None]
) -> None:
    import torch

    from mlfsnn.bench import machine_info, write

    settings = {"quick": True, "repeats": 1, "variants": []}
    result = {"machine": machine_info(torch.device("cpu")), "settings": settings}
    write(result, tmp_path / "bench")
    before = _files(tmp_path / "bench")
    disk_full(10)
    with pytest.raises(ReportError, match=rf"^cannot write {re.escape(str(tmp_path))}/bench/bench.json: "):
        write({**result, "settings": {**result["settings"], "repeats": 5}}, tmp_path / "bench")
    assert _files(tmp_path / "bench") == before


def test_gpu_check_outputs_replace_planted_links(tmp_path: Path) -> None:
    from mlfsnn.bench import gpu_check
    from mlfsnn.bench.gpu_sections import Part

    out, outside = tmp_path / "out", tmp_path / "outside"
    before = _plant_links(out, outside, ("gpu_check.json", "gpu_check.md", "p.json", "s.log"))
    report = {"mode": "cpu-smoke", "budget_s": 1, "started_utc": "now", "finished_utc": None}
    report |= {"precision": "fp32", "precision_source": "", "compile": {}, "sections": {}}
    gpu_check._write(report, out)
    Part(out / "p.json", status="ok").save()
    entry = gpu_check.run_child(
        [sys.executable, "-c", "print('hello')"], 30, out / "none.json", out / "s.log"
    )
    assert entry["status"] == "error"  # the child wrote no record: that is not what is tested here
    assert _files(outside) == before
    for name in ("gpu_check.json", "gpu_check.md", "p.json", "s.log"):
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert json.loads((out / "p.json").read_text())["status"] == "ok"
    assert (out / "s.log").read_text() == "hello\n"


def test_a_link_planted_at_the_default_report_folder_is_refused(sweep: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (sweep / "report").symlink_to(outside)
    proc = _snn_report(sweep)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "report is a symbolic link" in proc.stderr, proc.stderr
    assert "--out" in proc.stderr
    assert list(outside.iterdir()) == []  # nothing written through the link
    # Named with --out, the same link is the user's choice and is written through.
    proc = _snn_report(sweep, "--out", sweep / "report")
    assert proc.returncode == 0, proc.stderr
    assert (outside / "report.md").is_file()
