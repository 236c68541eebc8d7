"""NeuronMonitor.readings(): four readings of "dormant" against a plain scalar loop of the equations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlfsnn import MLF, NeuronMonitor, spiking_resnet


def plain_readings(xs: list[torch.Tensor], levels: int, threshold: float, width: float, decay: float):
    """The four readings of one layer over batches ``xs`` (each ``[T, B, ...]``), one unit at a time.

    Per unit (sample, neuron), per step t, per level k: ``u_k = decay * u_k * (1 - o_k) + x[t]``,
    ``o_k = u_k > th_k`` with ``th_k = threshold + k * width``; the step is "in a window" when some
    ``|u_k - th_k| < width / 2``.
    """
    units = steps = dormant = dormant_steps = silent = 0
    reached: dict[int, bool] = {}
    for x in xs:
        flat = x.reshape(x.shape[0], x.shape[1], -1).tolist()  # [T][B][N] Python floats
        for b in range(x.shape[1]):
            for n in range(len(flat[0][0])):
                u, o = [0.0] * levels, [0.0] * levels
                any_window, spikes = False, 0
                for t in range(x.shape[0]):
                    window = False
                    for k in range(levels):
                        th = threshold + k * width
                        u[k] = decay * u[k] * (1 - o[k]) + flat[t][b][n]
                        o[k] = 1.0 if u[k] > th else 0.0
                        spikes += int(o[k])
                        window |= abs(u[k] - th) < width / 2
                    dormant_steps += not window
                    any_window |= window
                    steps += 1
                units += 1
                dormant += not any_window
                silent += spikes == 0
                reached[n] = reached.get(n, False) or any_window
    return {
        "unit": dormant / units,
        "step": dormant_steps / steps,
        "silent": silent / units,
        "dead": sum(not r for r in reached.values()) / len(reached),
    }


@pytest.mark.parametrize(("levels", "decay"), [(1, 0.5), (3, 0.25), (4, 0.9)])
def test_readings_equal_the_plain_loop(levels: int, decay: float) -> None:
    torch.manual_seed(levels)
    layer = MLF(levels=levels, threshold=0.6, width=1.0, decay=decay)
    model = nn.Sequential(layer)
    # Two batches over the same neurons, a spread that leaves units below, inside and above the windows.
    xs = [torch.randn(5, 3, 2, 3, 3) * 3.0 - 1.0 for _ in range(2)]
    xs[1][:, :, 0, 0, 0] = -9.0  # neuron (0, 0, 0): dormant for every sample of both batches
    with NeuronMonitor(model, readings=True) as monitor:
        for x in xs:
            model(x)
    got = monitor.readings()
    want = plain_readings(xs, levels, 0.6, 1.0, decay)
    for reading, value in want.items():
        assert got[reading]["0"] == pytest.approx(value, abs=1e-12), reading
    assert got["unit"] == monitor.dormant_ratio()


def test_hand_worked_readings() -> None:
    # LIF (K=1), th 0.6, width 1: window (0.1, 1.1); T = 2, decay 0.5; one sample, four neurons:
    #   -5: u = -5, -7.5                 -> dormant at both steps, silent
    #  0.3: u = 0.3, 0.45                -> in the window at both steps, silent (never above 0.6)
    #  0.8: u = 0.8 (fires), then 0.8     -> in the window, fires twice
    #  100: u = 100 (fires), then 100     -> dormant at both steps (saturated), fires twice
    x = torch.tensor([-5.0, 0.3, 0.8, 100.0]).expand(2, 1, 4).contiguous()
    model = nn.Sequential(MLF(levels=1, threshold=0.6, width=1.0, decay=0.5))
    with NeuronMonitor(model, readings=True) as monitor:
        model(x)
    assert monitor.readings() == {
        "unit": {"0": 0.5},
        "step": {"0": 0.5},
        "silent": {"0": 0.5},
        "dead": {"0": 0.5},
    }
    # A second sample that brings neuron 0 into its window: it is no longer dead, still dormant once.
    with NeuronMonitor(model, readings=True) as monitor:
        model(torch.cat([x, torch.tensor([0.5, 0.3, 0.8, 100.0]).expand(2, 1, 4)], dim=1))
    r = monitor.readings()
    assert r["unit"] == {"0": 3 / 8} and r["dead"] == {"0": 0.25}


def test_readings_on_a_resnet_cover_every_layer_and_are_fractions() -> None:
    torch.manual_seed(0)
    model = spiking_resnet(depth=8, widths=(4, 8, 8), num_classes=3, neuron={"levels": 2}).eval()
    with torch.no_grad(), NeuronMonitor(model, readings=True) as monitor:
        model(torch.randn(3, 4, 3, 8, 8))
    r = monitor.readings()
    assert set(r) == {"unit", "step", "silent", "dead"}
    assert all(set(v) == set(monitor.layers) for v in r.values())
    for layer in monitor.layers:
        # a unit dormant at every step is dormant; dead over the set implies dormant for each sample
        assert r["dead"][layer] <= r["unit"][layer] <= r["step"][layer]
        assert all(0.0 <= r[k][layer] <= 1.0 for k in r)


def test_readings_need_to_be_asked_for() -> None:
    model = nn.Sequential(MLF())
    with NeuronMonitor(model) as monitor:
        model(torch.ones(2, 1, 3))
    with pytest.raises(RuntimeError, match="readings=False"):
        monitor.readings()
