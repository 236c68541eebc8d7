"""snn-export end to end on a tiny trained digits run (docs/export.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlfsnn import from_nir
from mlfsnn.cli.export import main, parse
from mlfsnn.data import DataInfo
from mlfsnn.errors import CheckpointError, ConfigError
from mlfsnn.runner.builders import build_model
from mlfsnn.runner.checkpoint import load_checkpoint
from mlfsnn.runner.export import export_checkpoint, input_shape
from mlfsnn.runner.trainer import train
from runner_utils import TINY, compose_cfg

nir = pytest.importorskip("nir")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny digits training run (one epoch, 8x8 images, T=2) shared by this module's tests."""
    path = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    train(compose_cfg([*TINY, "trainer.epochs=1"]), path)
    return path


def test_export_matches_the_trained_model(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "digits.nir"
    result = export_checkpoint(run_dir / "checkpoints" / "best.pt", [], out)
    assert result["input_shape"] == [1, 8, 8] and result["time_steps"] == 2
    assert result["max_abs_logit_diff"] < 1e-5
    assert {"Input", "Conv2d", "LIF", "Output"} == set(result["node_types"])  # the portable form
    assert result["target"] == "nir" and result["form"] == "portable"
    assert set(result["consumers"]) == {"snntorch", "norse", "nirtorch"}
    assert result["consumers"]["snntorch"].startswith("exact")
    graph = nir.read(out)
    assert graph.metadata["time_steps"] == 2 and not list(out.parent.glob(".*.tmp"))
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    cfg = compose_cfg([*TINY])
    model = build_model(cfg, DataInfo("digits", 10, 1, (8, 8), True, 0, 0)).eval()
    model.load_state_dict(state["model"])
    x = torch.rand(3, 4, 1, 8, 8) * 2
    with torch.no_grad():
        torch.testing.assert_close(from_nir(graph)(x), model(x), rtol=0, atol=1e-5)


def test_cli_in_process_default_out_and_overrides(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([f"checkpoint={run_dir}", "dt=1e-3", "time_steps=3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(run_dir / "model.nir") and summary["dt"] == 1e-3
    assert summary["time_steps"] == 3
    assert nir.read(run_dir / "model.nir").metadata["dt"] == 1e-3


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["checkpoint=nope.pt"], "checkpoint not found"),
        ([], "checkpoint is required"),
        (["checkpoint=x.pt", "dt=fast"], "dt='fast'"),
        (["badarg"], "expected key=value"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    args: list[str],
    expect: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and expect in err[0]


def test_bad_values_are_user_errors(run_dir: Path, tmp_path: Path) -> None:
    ckpt = run_dir / "checkpoints" / "best.pt"
    with pytest.raises(ConfigError, match="dt=0"):
        export_checkpoint(ckpt, [], tmp_path / "m.nir", dt=0)
    with pytest.raises(CheckpointError, match="does not fit"):
        export_checkpoint(ckpt, ["model.widths=[4,8,16]"], tmp_path / "m.nir")
    with pytest.raises(ConfigError, match="is a directory"):
        export_checkpoint(ckpt, [], tmp_path)
    assert not (tmp_path / "m.nir").exists()


def test_targets(run_dir: Path, tmp_path: Path) -> None:
    ckpt = run_dir / "checkpoints" / "best.pt"
    spec = export_checkpoint(ckpt, [], tmp_path / "spec.nir", target="spec")
    assert {"AvgPool2d", "Flatten", "Affine"} <= set(spec["node_types"]) and spec["max_abs_logit_diff"] < 1e-5
    assert "batch axis" in spec["consumers"]["snntorch"]
    norse = export_checkpoint(ckpt, [], tmp_path / "norse.nir", target="norse")
    assert norse["dt"] == 1e-3 and nir.read(tmp_path / "norse.nir").metadata["target"] == "norse"
    assert "depth-first" in norse["consumers"]["norse"]  # K = 3: every layer has fan-in
    with pytest.raises(ConfigError, match=r"dt=0\.001 is invalid with target=snntorch"):
        export_checkpoint(ckpt, [], tmp_path / "s.nir", dt=1e-3, target="snntorch")
    with pytest.raises(ConfigError, match=r"neuron\.decay=1 cannot be exported with target=snntorch"):
        export_checkpoint(ckpt, ["neuron.decay=1.0"], tmp_path / "s.nir", target="snntorch")
    with pytest.raises(ConfigError, match="target='onnx' is invalid"):
        parse([f"checkpoint={ckpt}", "target=onnx"])
    assert not (tmp_path / "s.nir").exists()


def test_input_shape_for_fixed_size_datasets() -> None:
    cfg = compose_cfg([])  # cifar10: no dataset.size key, always 32 x 32
    assert input_shape(cfg, {"conv1.weight": torch.zeros(64, 3, 3, 3)}) == (3, 32, 32)
    with pytest.raises(CheckpointError, match=r"conv1\.weight"):
        input_shape(cfg, {})


def test_help_exits_0(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "snn-export checkpoint=" in capsys.readouterr().out


@pytest.mark.slow
def test_console_script_missing_checkpoint(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "snn-export"), f"checkpoint={tmp_path / 'missing.pt'}", f"out={tmp_path / 'm.nir'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: checkpoint not found: {tmp_path / 'missing.pt'}"
    ]
