"""Spike plots: the recorder's counts, the PNGs drawn from plain arrays, ``plots=`` parsing, and one
end-to-end ``snn-eval plots=true`` on a tiny trained digits run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mlfsnn.report.spikes as spikes
from mlfsnn.cli.eval import main, parse
from mlfsnn.errors import ConfigError
from mlfsnn.nn import MLF
from mlfsnn.nn.observe import SpikeRecorder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _valid_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, path
    height, width, _ = imread(path).shape
    assert height > 200 and width > 200, path


def test_recorder_keeps_one_sample_and_every_sample_rate() -> None:
    model = nn.Sequential(MLF(levels=3, threshold=0.5, width=1.0, decay=0.0))
    x = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 0.0, 3.0]], [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])  # [T, B, N]
    with SpikeRecorder(model) as rec:
        model(x)
        model(torch.zeros_like(x))  # a second batch: counts towards the rates, not the raster
    assert not model[0]._forward_hooks
    assert rec.levels == {"0": 3}
    assert rec.rasters["0"].tolist() == [[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]]  # sample 0 of batch 1
    # Spikes per neuron per step over 4 samples x 3 neurons: step 1 has 12, step 2 has 2.
    assert rec.rates()["0"].tolist() == pytest.approx([12 / 12, 2 / 12])


def test_plots_from_arrays_are_valid_pngs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spikes, "_PANELS", 2)  # 3 layers -> the raster splits over two files
    rng = np.random.default_rng(0)
    names = ["sn1", "layer1.0.sn1", "layer2.0.shortcut.2"]
    rasters = {n: rng.integers(0, 4, size=(4, 300)).astype(float) for n in names}
    rates = {n: r.mean(axis=1) for n, r in rasters.items()}
    written = spikes.write_spike_plots(rasters, rates, 3, tmp_path / "new", stem="e", samples=7)
    assert [p.name for p in written] == [
        "e_spike_raster_1.png",
        "e_spike_raster_2.png",
        "e_firing_rate_per_step.png",
    ]
    for path in written:
        _valid_png(path)
    assert spikes.subsample(300).tolist()[:3] == [0, 5, 9] and len(spikes.subsample(300)) == 64
    assert spikes.subsample(10).tolist() == list(range(10))


@pytest.mark.parametrize("value", ["yes", "", "1"])
def test_bad_plots_value_is_a_one_line_error(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(["checkpoint=run", f"plots={value}"])
    assert str(err.value) == f"plots={value!r} is invalid: expected true or false"


def test_plots_flag_is_parsed_and_not_an_override() -> None:
    _, _, overrides, plots = parse(["checkpoint=run", "plots=True", "time_steps=3"])
    assert plots is True and overrides == ["time_steps=3"]
    assert parse(["checkpoint=run"])[3] is False


@pytest.mark.slow
def test_snn_eval_plots_true_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mlfsnn.runner.trainer import train
    from runner_utils import TINY, compose_cfg

    summary = train(compose_cfg([*TINY, "trainer.epochs=1"]), tmp_path / "run")
    assert summary["energy_ratio"] > 0 and summary["energy_pj_per_sample"] > 0
    assert main([f"checkpoint={tmp_path / 'run'}", "plots=true", "trainer.device=cpu"]) == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert "spikes" not in result
    plots = [Path(p) for p in result["plots"]]
    assert [p.name for p in plots] == ["eval_spike_raster.png", "eval_firing_rate_per_step.png"]
    for path in plots:
        _valid_png(path)
        assert path.parent == tmp_path / "run"
    assert f"wrote {plots[0]}" in capsys.readouterr().out
    for key in ("energy_pj_per_sample", "energy_event_pj_per_sample", "ann_energy_pj_per_sample"):
        assert result[key] > 0
    assert result["energy_ratio"] == pytest.approx(
        result["ann_energy_pj_per_sample"] / result["energy_pj_per_sample"]
    )
