"""Spiking DS-ResNet / plain spiking ResNet: parameter counts, block semantics, wiring.

See docs/method.md §3-4.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from torch import nn

from mlfsnn import MLF, PAPER_NETS, SpikingResNet, TdBatchNorm, count_parameters, create_model, spiking_resnet
from mlfsnn.nn.resnet import SpikingBasicBlock

NEURON = {"levels": 3, "threshold": 0.6, "width": 1.0, "decay": 0.25}

PAPER = [
    # name, explicit arguments, trainable parameters (docs/method.md §4)
    ("cifar10", dict(depth=20, widths=(64, 128, 256), in_channels=3, num_classes=10), 4_327_754),
    (
        "dvs_gesture",
        dict(depth=20, widths=(16, 32, 64), in_channels=2, num_classes=11, input_norm=True),
        272_395,
    ),
    ("cifar10_dvs", dict(depth=14, widths=(32, 64, 128), in_channels=2, num_classes=10), 696_330),
]


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def small_net(**kw: Any) -> SpikingResNet:
    args: dict[str, Any] = dict(depth=8, widths=(4, 8, 8), in_channels=3, num_classes=5)
    args.update(kw)
    return spiking_resnet(**args)


def tiny_input(steps: int = 2, batch: int = 3, channels: int = 3, size: int = 8) -> torch.Tensor:
    return torch.randn(steps, batch, channels, size, size) * 3


def record_outputs(model: nn.Module, kind: type[nn.Module]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, kind):
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach().clone())
                )
            )
    return outputs, handles


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "args", "params"), PAPER)
def test_paper_parameter_counts(name: str, args: dict[str, Any], params: int) -> None:
    model = create_model(name)
    assert trainable(model) == params
    assert count_parameters(model) == params
    explicit = spiking_resnet(**args)
    assert trainable(explicit) == params
    assert PAPER_NETS[name] == args


def test_create_model_overrides_and_unknown_name() -> None:
    model = create_model("cifar10_dvs", widths=(4, 8, 8), num_classes=3)
    assert model.widths == (4, 8, 8) and model.fc.out_features == 3 and model.depth == 14
    with pytest.raises(ValueError, match="cifar100"):
        create_model("cifar100")


def test_count_parameters_ignores_frozen() -> None:
    model = small_net()
    total = trainable(model)
    model.fc.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.fc.weight.numel()


# ---------------------------------------------------------------------------------------------
# Forward / backward of a tiny net
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["ds", "plain"])
def test_every_parameter_gets_a_finite_gradient(block: str) -> None:
    model = small_net(block=block)
    spikes, handles = record_outputs(model, MLF)
    x = tiny_input()
    out = model(x)
    assert out.shape == (3, 5)
    # Neurons fired in every layer (so the gradients below went through real spikes).
    assert len(spikes) == (9 if block == "ds" else 7)
    for name, s in spikes.items():
        assert s.sum() > 0, name
    nn.functional.cross_entropy(out, torch.tensor([0, 3, 4])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for h in handles:
        h.remove()


def test_output_shape_and_input_validation() -> None:
    model = small_net(num_classes=7, in_channels=2)
    assert model(torch.randn(3, 2, 2, 8, 8)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"\[T, B, C, H, W\]"):
        model(torch.randn(2, 2, 8, 8))


def test_logits_are_mean_over_time_of_classifier_outputs() -> None:
    model = small_net()
    captured: list[torch.Tensor] = []
    model.fc.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    steps, batch = 4, 3
    out = model(tiny_input(steps=steps, batch=batch))
    assert len(captured) == 1
    per_step = captured[0].reshape(steps, batch, -1)
    # Not trivially equal to one step: the steps differ.
    assert not torch.allclose(per_step[0], per_step[1])
    torch.testing.assert_close(out, per_step.mean(0), atol=1e-6, rtol=1e-5)


def test_eval_batch_independence() -> None:
    model = small_net()
    model(tiny_input(batch=4))  # populate the running statistics
    model.eval()
    x = tiny_input(batch=4)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[:, i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_train_mode_depends_on_batch() -> None:
    # Control for the test above: in training mode tdBN uses batch statistics.
    model = small_net()
    x = tiny_input(batch=4)
    batched = model(x)
    single = torch.cat([model(x[:, i : i + 1]) for i in range(4)])
    assert not torch.allclose(batched, single, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Block semantics
# ---------------------------------------------------------------------------------------------


def zero_convs(block: SpikingBasicBlock) -> None:
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv2.weight.zero_()


@pytest.mark.parametrize("train", [True, False])
def test_ds_block_with_zero_convs_is_identity(train: bool) -> None:
    block = SpikingBasicBlock(4, 4, 1, "ds", NEURON)
    zero_convs(block)
    block.train(train)
    x = torch.randint(0, 8, (3, 2, 4, 5, 5)).float()  # spike counts, also above K
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("train", [True, False])
def test_plain_block_with_zero_convs_refires(train: bool) -> None:
    block = SpikingBasicBlock(4, 4, 1, "plain", NEURON)
    zero_convs(block)
    block.train(train)
    # Constant-in-time counts, T = 2. out = MLF(0 + x) with th 0.6 / 1.6 / 2.6, decay 0.25:
    #   x=0 -> 0, 0.   x=1 -> 1, 1 (level 1: 1, 1.25 < 1.6).
    #   x=2 -> 2, 2 (level 2: 2, 0.5 + 2 = 2.5 < 2.6).   x=5 -> 3, 3 (saturates at K).
    values = torch.tensor([0.0, 1.0, 2.0, 5.0])
    x = values[torch.randint(0, 4, (2, 4, 5, 5))].expand(2, 2, 4, 5, 5).contiguous()
    expected = torch.clamp(x, max=3.0)
    out = block(x)
    assert torch.equal(out, expected)
    assert not torch.equal(out, x)


def test_ds_counts_can_exceed_levels() -> None:
    block = SpikingBasicBlock(4, 4, 1, "ds", NEURON)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.bn2.bias.fill_(10.0)  # sn2 sees a constant 10 -> all three levels fire at every step
    x = torch.randint(0, 4, (3, 2, 4, 5, 5)).float()  # an upstream neuron's counts, 0..3
    out = block(x)
    assert torch.equal(out, x + 3)
    assert out.max() == 6 > NEURON["levels"]


@pytest.mark.parametrize("block", ["ds", "plain"])
def test_block_outputs_are_counts(block: str) -> None:
    model = small_net(depth=14, block=block)
    with torch.no_grad():  # push the second neuron of every block to fire a lot
        for m in model.modules():
            if isinstance(m, SpikingBasicBlock):
                m.bn2.bias.fill_(2.0)
    outputs, _ = record_outputs(model, SpikingBasicBlock)
    model(tiny_input())
    assert len(outputs) == 6
    for name, out in outputs.items():
        assert (out >= 0).all() and torch.equal(out, out.round()), name
        if block == "plain":
            assert out.max() <= NEURON["levels"], name
    if block == "ds":
        # Counts inside a stage grow past K: the second block of stage 1 adds to the first one's.
        assert outputs["layer1.1"].max() > NEURON["levels"]


def test_shortcut_structure() -> None:
    ds = small_net(block="ds")
    ds_no = small_net(block="ds", shortcut_neuron=False)
    plain = small_net(block="plain")
    for stage in ("layer2", "layer3"):
        sc = getattr(ds, stage)[0].shortcut
        assert [type(m) for m in sc] == [nn.Conv2d, TdBatchNorm, MLF]
        assert sc[0].stride == (2, 2) and sc[0].kernel_size == (1, 1)
        for model in (ds_no, plain):
            assert [type(m) for m in getattr(model, stage)[0].shortcut] == [nn.Conv2d, TdBatchNorm]
    assert ds.layer1[0].shortcut is None
    assert trainable(ds) == trainable(ds_no) == trainable(plain)
    mlf_count = sum(isinstance(m, MLF) for m in ds.modules())
    assert mlf_count == sum(isinstance(m, MLF) for m in ds_no.modules()) + 2


def test_shortcut_without_neuron_adds_real_values() -> None:
    model = small_net(block="ds", shortcut_neuron=False)
    outputs, _ = record_outputs(model, SpikingBasicBlock)
    model(tiny_input())
    assert torch.equal(outputs["layer1.0"], outputs["layer1.0"].round())
    assert not torch.equal(outputs["layer2.0"], outputs["layer2.0"].round())


def test_input_norm() -> None:
    plain_input = small_net()
    assert plain_input.bn0 is None
    model = small_net(input_norm=True)
    assert isinstance(model.bn0, TdBatchNorm) and not model.bn0.affine
    assert trainable(model) == trainable(plain_input)
    assert isinstance(create_model("dvs_gesture").bn0, TdBatchNorm)
    assert create_model("cifar10").bn0 is None and create_model("cifar10_dvs").bn0 is None
    calls: list[torch.Tensor] = []
    model.bn0.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0]))
    x = tiny_input()
    model(x)
    assert len(calls) == 1 and calls[0] is x  # the very first layer sees the raw input


def test_stem_structure_and_neuron_arguments() -> None:
    model = small_net(neuron={"levels": 2, "threshold": 0.4})
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.stride == (1, 1)
    assert model.conv1.kernel_size == (3, 3)
    for m in model.modules():
        if isinstance(m, MLF):
            assert (m.levels, m.threshold, m.width, m.decay) == (2, 0.4, 1.0, 0.25)
        if isinstance(m, TdBatchNorm):
            assert m.threshold == 0.4 and m.alpha == 1.0
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [1, 1, 1]
    assert len(small_net(depth=20).layer2) == 3


def test_kaiming_normal_init_and_no_conv_bias() -> None:
    model = create_model("cifar10_dvs")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 6 + 2
    for m in [*convs, model.fc]:
        w = m.weight.detach()
        fan_in = w[0].numel()
        expected = math.sqrt(2.0 / fan_in)
        tol = 0.1 if w.numel() >= 2000 else 0.2
        assert w.std().item() == pytest.approx(expected, rel=tol)
        assert abs(w.mean().item()) < 4 * expected / math.sqrt(w.numel())
    assert all(m.bias is None for m in convs)
    assert model.fc.bias is not None


# ---------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [21, 0, 2, 7, "20", 20.0, True])
def test_invalid_depth(depth: Any) -> None:
    with pytest.raises(ValueError, match=r"6n\+2.*8, 14, 20, 26, 32.*got " + re.escape(repr(depth))):
        spiking_resnet(depth=depth, widths=(4, 8, 8))


@pytest.mark.parametrize("depth", [8, 14, 20])
def test_valid_depths(depth: int) -> None:
    n = (depth - 2) // 6
    model = small_net(depth=depth)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [n, n, n]


def test_invalid_block_and_neuron() -> None:
    with pytest.raises(ValueError, match=r"block.*'foo'"):
        small_net(block="foo")
    with pytest.raises(ValueError, match=r"levels.*\b0\b"):
        small_net(neuron={"levels": 0})
    with pytest.raises(ValueError, match=r"width"):
        small_net(neuron={"width": -1.0})
