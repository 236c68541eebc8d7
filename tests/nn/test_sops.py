"""Synaptic operations: spikes times fan-out, on tiny layers with hand-counted answers."""

from __future__ import annotations

import torch
from torch import nn

import mlfsnn
from mlfsnn.nn.observe import SynapticOps
from mlfsnn.nn.resnet import fold


class ConvThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, B, 1, 5, 5]
        fold(self.conv2, x)
        return fold(self.fc, x[:, :, 0, 0, :4])


def test_conv_and_linear_sops_equal_spikes_times_fan_out() -> None:
    x = torch.zeros(2, 2, 1, 5, 5)  # T=2, B=2
    x[0, 0, 0, 2, 2] = 1  # interior spike: reaches 2 channels x 9 positions = 18 outputs
    x[1, 1, 0, 1, 3] = 2  # an MLF count of 2 is two spikes
    x[1, 0, 0, 0, 1] = 1  # row 0, col 1: feeds the linear layer too (3 outputs)
    model = ConvThenLinear()
    with SynapticOps(model, exclude=()) as sops:
        model(x)
    per_layer = sops.per_layer()
    # Mean fan-out of a padded 3x3 conv is out_channels * 9 (exact away from borders).
    assert per_layer["conv2"] == 4 * 18 / 2
    assert per_layer["fc"] == 1 * 3 / 2  # one spike in the 4 linear inputs, 2 samples
    assert sops.sops_per_sample() == 36 + 1.5
    assert sops.ann_macs_per_sample() == 2 * 25 * 9 + 3 * 4
    assert sops.samples == 2


def test_no_spikes_no_sops_and_hooks_removed() -> None:
    model = ConvThenLinear()
    with SynapticOps(model, exclude=()) as sops:
        model(torch.zeros(3, 1, 1, 5, 5))
    assert sops.sops_per_sample() == 0
    assert not model.conv2._forward_hooks and not model._forward_pre_hooks


def test_network_sops_exclude_the_real_valued_stem_and_classifier() -> None:
    model = mlfsnn.spiking_resnet(depth=8, widths=(4, 8, 8), in_channels=1, num_classes=10).eval()
    with SynapticOps(model) as sops:
        model(torch.randn(2, 3, 1, 8, 8) * 3)
    layers = sops.per_layer()
    # The classifier reads average-pooled spike counts (real values): MACs, like the stem.
    assert "conv1" not in layers and "layer1.0.conv1" in layers and "fc" not in layers
    assert sops.sops_per_sample() > 0
    # The stem still counts in the ANN's MACs: 4 filters x 64 positions x 9 taps.
    assert sops.macs["conv1"] == 4 * 64 * 9
