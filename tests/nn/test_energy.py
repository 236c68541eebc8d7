"""The energy estimate against a hand count: Linear -> MLF -> Linear with fixed weights and inputs
whose spike counts are known, including counts of 2 and 3 so that per-level and per-event differ."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import mlfsnn
import mlfsnn.runner.loop as loop
from mlfsnn.nn import MLF
from mlfsnn.nn.observe import E_AC_PJ, E_MAC_PJ, SynapticOps

# Inputs [T=2, B=2, 2]. conv1 computes (a, b, a + b); with decay 0 and thresholds 0.5 / 1.5 / 2.5 a
# potential u fires floor(u + 0.5) levels, so the MLF counts are the potentials themselves:
#   sample 0: t0 (1, 2, 3), t1 (0, 1, 1)  -> 8 spikes, 5 non-zero outputs
#   sample 1: t0 (3, 0, 3), t1 (0, 0, 0)  -> 6 spikes, 2 non-zero outputs
X = torch.tensor([[[1.0, 2.0], [3.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
SPIKES, EVENTS, SAMPLES, FAN_OUT, STEPS = 14, 7, 2, 4, 2
STEM_MACS, FC2_MACS = 2 * 3, 3 * 4


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Named like the ResNet's stem, which SynapticOps counts as real-valued (MACs) by default.
        self.conv1 = nn.Linear(2, 3, bias=False)
        self.sn = MLF(levels=3, threshold=0.5, width=1.0, decay=0.0)
        self.fc2 = nn.Linear(3, FAN_OUT, bias=False)  # spike-fed: one accumulate per spike per output
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.fc2.weight.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, B, 2] -> logits [B, 4]
        return self.fc2(self.sn(self.conv1(x))).mean(0)


def _hand_count(e_ac: float, e_mac: float) -> dict[str, float]:
    sops, events = SPIKES * FAN_OUT / SAMPLES, EVENTS * FAN_OUT / SAMPLES  # 28 and 14 per sample
    macs = STEM_MACS * STEPS  # the real-valued layer runs once per time step: 12 per sample
    snn, snn_event, ann = (
        sops * e_ac + macs * e_mac,
        events * e_ac + macs * e_mac,
        (STEM_MACS + FC2_MACS) * e_mac,
    )
    return {
        "sops_per_sample": sops,
        "sops_per_event_sample": events,
        "snn_macs_per_sample": macs,
        "ann_macs_per_sample": STEM_MACS + FC2_MACS,
        "energy_pj_per_sample": snn,
        "energy_event_pj_per_sample": snn_event,
        "ann_energy_pj_per_sample": ann,
        "energy_ratio": ann / snn,
        "energy_ratio_event": ann / snn_event,
    }


def test_spike_counts_are_the_hand_counted_ones() -> None:
    model = TwoLayer()
    counts = model.sn(model.conv1(X))
    assert counts.sum() == SPIKES and torch.count_nonzero(counts) == EVENTS
    assert set(counts.unique().tolist()) == {0, 1, 2, 3}


def test_energy_matches_the_hand_count() -> None:
    model = TwoLayer().eval()
    with SynapticOps(model) as sops:
        model(X)
    got = sops.energy_metrics()
    assert got == pytest.approx(_hand_count(E_AC_PJ, E_MAC_PJ))
    assert got["energy_pj_per_sample"] == pytest.approx(28 * 0.9 + 12 * 4.6)  # 80.4 pJ
    assert got["energy_event_pj_per_sample"] == pytest.approx(14 * 0.9 + 12 * 4.6)  # 67.8 pJ
    assert got["ann_energy_pj_per_sample"] == pytest.approx(18 * 4.6)  # 82.8 pJ
    assert sops.per_layer() == {"fc2": 28.0} and sops.per_layer_events() == {"fc2": 14.0}


@pytest.mark.parametrize("block", ["plain", "ds"])
def test_binary_spikes_count_the_same_both_ways_unless_added(block: str) -> None:
    torch.manual_seed(0)
    net = dict(depth=8, widths=(4, 8, 8), in_channels=1, block=block, neuron={"levels": 1})
    model = mlfsnn.spiking_resnet(**net).eval()
    with SynapticOps(model) as sops:
        model(torch.randn(2, 3, 1, 8, 8) * 3)
    assert sops.sops_per_sample() > 0
    if block == "plain":  # add, then fire: every spike-fed layer reads binary spikes
        assert sops.event_sops_per_sample() == pytest.approx(sops.sops_per_sample())
    else:  # fire, then add: where both added maps fired, a count of 2 is one event
        assert sops.event_sops_per_sample() < sops.sops_per_sample()
    # The stem and the classifier run on every one of the T=2 steps.
    assert sops.real_macs_per_sample() == 2 * (sops.macs["conv1"] + sops.macs["fc"])


def _ctx(world_size: int) -> SimpleNamespace:
    cfg = OmegaConf.create({"trainer": {"precision": "fp32"}, "energy": {"e_ac_pj": 1.0, "e_mac_pj": 3.0}})
    return SimpleNamespace(
        cfg=cfg,
        device=torch.device("cpu"),
        world_size=world_size,
        autocast=lambda: torch.autocast("cpu", enabled=False),
        to_model_input=lambda x: x.transpose(0, 1),  # frames [B, T, ...] -> [T, B, ...]
    )


@pytest.mark.parametrize("world_size", [1, 2])
def test_evaluate_reports_energy_with_the_configured_constants(
    world_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two ranks that saw the same data: every sum doubles, so every per-sample figure must not change.
    monkeypatch.setattr(loop, "all_reduce_sum", lambda values, device: [world_size * v for v in values])
    loader = [(X.transpose(0, 1), torch.tensor([0, 1]))]
    out = loop.evaluate(TwoLayer(), loader, _ctx(world_size))
    expected = _hand_count(1.0, 3.0)
    assert {k: out[k] for k in expected} == pytest.approx(expected)
    assert out["firing_rate"] == {"sn": pytest.approx(SPIKES / (STEPS * SAMPLES * 3))}
