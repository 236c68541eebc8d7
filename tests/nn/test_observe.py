"""NeuronMonitor: firing rate, dormant ratio and spikes per sample on inputs with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlfsnn import MLF, NeuronMonitor, spiking_resnet


def plain_dormant(x: torch.Tensor, levels: int, threshold: float, width: float, decay: float) -> torch.Tensor:
    """Per (sample, neuron): True when no level's potential is ever inside its window (docs/method.md §8)."""
    active = torch.zeros(x.shape[1:], dtype=torch.bool)
    us = [torch.zeros(x.shape[1:]) for _ in range(levels)]
    os_ = [torch.zeros(x.shape[1:]) for _ in range(levels)]
    for t in range(x.shape[0]):
        for k in range(levels):
            th = threshold + k * width
            us[k] = decay * us[k] * (1 - os_[k]) + x[t]
            os_[k] = (us[k] > th).float()
            active |= (us[k] - th).abs() < width / 2
    return ~active


def test_firing_rate_of_known_spike_train() -> None:
    # K=2, th 0.5 / 1.5, decay 0.5, constant x = 1: spike train 1, 1, 2, 1, 1, 2 (worked out by hand
    # in test_neurons.test_hand_checked_constant_current_k2) -> 8 spikes in 6 steps per neuron.
    model = nn.Sequential(MLF(levels=2, threshold=0.5, width=1.0, decay=0.5))
    x = torch.ones(6, 2, 3)  # T=6, B=2, 3 neurons
    with NeuronMonitor(model) as monitor:
        out = model(x)
    assert out[:, 0, 0].tolist() == [1, 1, 2, 1, 1, 2]
    assert monitor.firing_rate() == {"0": 8 / 6}
    assert monitor.spikes_per_sample() == {"0": 8 * 3}
    # The level-0 potential sits at 1.0, inside its window (0, 1): no unit is dormant.
    assert monitor.dormant_ratio() == {"0": 0.0}


def test_dormant_ratio_known() -> None:
    model = nn.Sequential(MLF(levels=3, threshold=0.6, width=1.0, decay=0.25))
    # 4 neurons x 2 samples, T=3. Windows: (0.1, 1.1), (1.1, 2.1), (2.1, 3.1).
    #   -5.0: potentials always far below every window          -> dormant
    #    1.0: level 0 at 1.0, inside (0.1, 1.1)                  -> not dormant
    #  100.0: fires all levels every step, potential 100 always  -> dormant (saturated)
    #    0.05: u0 = 0.05, 0.0625, 0.0656: just below (0.1, ...)  -> dormant
    x = torch.tensor([-5.0, 1.0, 100.0, 0.05]).expand(3, 2, 4).contiguous()
    with NeuronMonitor(model) as monitor:
        out = model(x)
    assert out[:, 0, 2].tolist() == [3, 3, 3]
    assert monitor.dormant_ratio() == {"0": 0.75}
    expected = plain_dormant(x, 3, 0.6, 1.0, 0.25)
    assert expected.tolist() == [[True, False, True, True]] * 2


def test_dormant_ratio_exactly_half() -> None:
    model = nn.Sequential(MLF())
    x = torch.where(torch.arange(10) < 5, -50.0, 0.8).expand(4, 3, 10).contiguous()
    with NeuronMonitor(model) as monitor:
        model(x)
    assert monitor.dormant_ratio() == {"0": 0.5}


def test_level_two_window_is_not_dormant_but_lif_is() -> None:
    # T=1, x = 2.5: u_k = 2.5 for every level. Only level 2's window (2.1, 3.1) contains it.
    x = torch.full((1, 4, 2), 2.5)
    mlf3 = nn.Sequential(MLF(levels=3, threshold=0.6, width=1.0))
    lif = nn.Sequential(MLF(levels=1, threshold=0.6, width=1.0))
    with NeuronMonitor(mlf3) as m3, NeuronMonitor(lif) as m1:
        mlf3(x)
        lif(x)
    assert m3.dormant_ratio() == {"0": 0.0}
    assert m1.dormant_ratio() == {"0": 1.0}  # plain LIF: 2.5 is outside its only window (0.1, 1.1)
    # The same with K=2: level 1's window is (1.1, 2.1), so 2.5 is in no window.
    mlf2 = nn.Sequential(MLF(levels=2))
    with NeuronMonitor(mlf2) as m2:
        mlf2(x)
    assert m2.dormant_ratio() == {"0": 1.0}


def test_monitor_detaches_and_does_not_change_outputs() -> None:
    model = spiking_resnet(depth=8, widths=(4, 8, 8), num_classes=3)
    model.eval()
    x = torch.randn(2, 2, 3, 8, 8) * 3
    with torch.no_grad():
        before = model(x)
        with NeuronMonitor(model) as monitor:
            during = model(x)
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    neurons = [m for m in model.modules() if isinstance(m, MLF)]
    assert neurons and all(not m._forward_hooks for m in neurons)
    rates = monitor.firing_rate()
    with torch.no_grad():
        model(x)
    assert monitor.firing_rate() == rates  # nothing recorded after the with block
    # An exception inside the block detaches too.
    with pytest.raises(RuntimeError, match="boom"), NeuronMonitor(model):
        assert all(len(m._forward_hooks) == 1 for m in neurons)
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in neurons)


def test_accumulation_across_batches() -> None:
    model = nn.Sequential(MLF(levels=2, threshold=0.5, width=1.0, decay=0.5))
    monitor = NeuronMonitor(model).attach()
    model(torch.ones(6, 2, 3))  # 8 spikes per neuron; level-0 potential in its window: active
    model(torch.zeros(6, 3, 3))  # silent, potential 0 is outside (0, 1): dormant
    monitor.detach()
    # spikes: 2 * 3 * 8 = 48 over neuron-steps 6 * 2 * 3 + 6 * 3 * 3 = 90
    assert monitor.firing_rate()["0"] == pytest.approx(48 / 90)
    assert monitor.spikes_per_sample()["0"] == pytest.approx(48 / 5)
    assert monitor.dormant_ratio()["0"] == pytest.approx(9 / 15)
    st = monitor.stats["0"]
    assert (st.samples, st.units, st.neuron_steps, st.neurons, st.time_steps) == (5, 15, 90, 3, 6)
    monitor.reset()
    assert monitor.firing_rate() == {} and monitor.spikes_per_sample() == {}


def test_spikes_per_sample_multidimensional() -> None:
    model = nn.Sequential(nn.Identity(), MLF(levels=3, decay=0.0))
    # decay 0: count = number of thresholds (0.6, 1.6, 2.6) below x at each step.
    x = torch.zeros(2, 3, 2, 2, 2)
    x[0, 0] = 1.0  # sample 0, step 0: 8 neurons x 1 = 8
    x[1, 0, 0] = 3.0  # sample 0, step 1: 4 neurons x 3 = 12
    x[0, 2, 1, 0, 0] = 2.0  # sample 2, step 0: 1 neuron x 2 = 2
    with NeuronMonitor(model) as monitor:
        model(x)
    assert monitor.spikes_per_sample() == {"1": pytest.approx((8 + 12 + 2) / 3)}
    assert monitor.firing_rate() == {"1": pytest.approx(22 / (2 * 3 * 8))}
    assert monitor.stats["1"].neurons == 8


def test_dormant_disabled() -> None:
    model = nn.Sequential(MLF())
    with NeuronMonitor(model, dormant=False) as monitor:
        model(torch.ones(2, 2, 2))
    assert monitor.firing_rate() == {"0": 1.0}
    with pytest.raises(RuntimeError, match="dormant=False"):
        monitor.dormant_ratio()


def test_full_resnet_layer_names_and_values() -> None:
    model = spiking_resnet(depth=8, widths=(4, 8, 8), num_classes=3)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_m: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
            inputs[name] = inp[0].detach().clone()
            outputs[name] = out.detach().clone()

        return hook

    for name, m in model.named_modules():
        if isinstance(m, MLF):
            m.register_forward_hook(record(name))
    x = torch.randn(3, 2, 3, 8, 8) * 3
    with NeuronMonitor(model) as monitor:
        model(x).sum().backward()  # works during training too
    expected_names = {
        "sn1",
        "layer1.0.sn1",
        "layer1.0.sn2",
        "layer2.0.sn1",
        "layer2.0.sn2",
        "layer2.0.shortcut.2",
        "layer3.0.sn1",
        "layer3.0.sn2",
        "layer3.0.shortcut.2",
    }
    rates = monitor.firing_rate()
    dormant = monitor.dormant_ratio()
    per_sample = monitor.spikes_per_sample()
    assert set(rates) == set(dormant) == set(per_sample) == set(outputs) == expected_names
    for name in expected_names:
        out = outputs[name]
        assert rates[name] == pytest.approx(out.mean().item())
        assert per_sample[name] == pytest.approx(out.sum().item() / 2)
        mask = plain_dormant(inputs[name], 3, 0.6, 1.0, 0.25)
        assert dormant[name] == pytest.approx(mask.float().mean().item())
    assert 0 < rates["sn1"] < 3
    assert 0 < dormant["sn1"] < 1
