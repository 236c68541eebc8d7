"""tdBN fused into the MLF kernel: the same spikes as tdBN then MLF, bit for bit; gradients allclose to
a plain implementation of the equations; the unfused path wherever fusion cannot keep that promise."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import mlfsnn.kernels as kernels
from mlfsnn import MLF, NeuronMonitor, TdBatchNorm, create_model, mlf_reference
from mlfsnn.kernels.ops import tdbn_mlf_backward_op, tdbn_mlf_forward_op
from mlfsnn.nn.fused import fusion, tdbn_fire


@pytest.fixture(scope="module", autouse=True)
def _kernel_built() -> None:
    if kernels.fused_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no C compiler: the fused CPU kernel cannot be built here")


def _plain_tdbn(x: torch.Tensor, bn: TdBatchNorm, train: bool) -> torch.Tensor:
    """tdBN written out from its definition (docs/method.md §2), independent of TdBatchNorm.forward."""
    flat = x.flatten(0, 1)
    dims = [0, *range(2, flat.dim())]
    view = (1, -1) + (1,) * (flat.dim() - 2)
    if train:
        mean = flat.mean(dims, keepdim=True)
        var = ((flat - mean) ** 2).mean(dims, keepdim=True)
    else:
        mean, var = bn.running_mean.view(view), bn.running_var.view(view)
    z = bn.alpha * bn.threshold * (flat - mean) / (var.sqrt() + bn.eps)
    return (z * bn.weight.view(view) + bn.bias.view(view)).reshape(x.shape)


def _layer(channels: int, levels: int, detach_reset: bool, seed: int = 0) -> tuple[TdBatchNorm, MLF]:
    torch.manual_seed(seed)
    bn = TdBatchNorm(channels, threshold=0.6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return bn, MLF(levels=levels, detach_reset=detach_reset)


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_matches_plain_tdbn_then_reference_neuron(levels: int, detach_reset: bool, train: bool) -> None:
    bn, neuron = _layer(3, levels, detach_reset)
    bn.train(train)
    x = torch.randn(7, 2, 3, 5, 9) * 1.7 + 0.3  # odd plane: tiles straddle channels
    grad = torch.randn_like(x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref_bn = copy.deepcopy(bn)
    out = tdbn_fire(bn, neuron, xa)
    ref = mlf_reference(_plain_tdbn(xb, ref_bn, train), levels, 0.6, 1.0, 0.25, detach_reset)
    assert torch.equal(out, ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn.weight.grad, ref_bn.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn.bias.grad, ref_bn.bias.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("train", [True, False])
def test_bit_identical_to_unfused_layer_and_running_stats(train: bool) -> None:
    bn, neuron = _layer(4, 3, False, seed=1)
    bn.train(train)
    bn_ref = copy.deepcopy(bn)
    x = torch.randn(6, 3, 4, 8, 8) * 2
    out = tdbn_fire(bn, neuron, x)
    assert torch.equal(out, neuron(bn_ref(x)))
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert torch.equal(bn.num_batches_tracked, bn_ref.num_batches_tracked)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("dvs_gesture", (4, 2, 2, 16, 16)), ("cifar10", (2, 2, 3, 16, 16)), ("cifar10_dvs", (3, 2, 2, 12, 12))],
)
def test_paper_nets_same_logits_and_gradients_as_unfused(name: str, shape: tuple) -> None:
    torch.manual_seed(0)
    model = create_model(name, widths=(8, 16, 16))
    twin = copy.deepcopy(model)
    x, y = torch.randn(*shape) * 1.5, torch.randint(0, 10, (shape[1],))
    F.cross_entropy(out := model(x), y).backward()
    with fusion(False):
        F.cross_entropy(ref := twin(x), y).backward()
    assert torch.equal(out, ref)
    for (pname, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=pname)
    for a, b in zip(model.buffers(), twin.buffers(), strict=True):
        assert torch.equal(a, b)


def test_saves_only_the_input_and_channel_vectors() -> None:
    bn, neuron = _layer(4, 3, False)
    out = tdbn_fire(bn, neuron, torch.randn(5, 2, 4, 6, 6).requires_grad_())
    node = out.grad_fn
    while node is not None and "tdbn_mlf_forward" not in type(node).__name__:
        node = node.next_functions[0][0]
    assert node is not None
    big = [t for t in node.saved_tensors if t.numel() > 4]
    assert [tuple(t.shape) for t in big] == [(5, 2 * 4 * 36)]


def test_observers_and_other_neurons_take_the_unfused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(kernels, "fused_tdbn_mlf", lambda *a, **k: calls.append(1))
    bn, neuron = _layer(2, 2, False)
    x = torch.randn(3, 2, 2, 4, 4)
    with NeuronMonitor(torch.nn.Sequential(bn, neuron)) as monitor:
        tdbn_fire(bn, neuron, x)
    assert monitor.firing_rate() and not calls
    tdbn_fire(bn, torch.nn.ReLU(), x)
    tdbn_fire(bn, neuron, x.double())
    with fusion(False):
        tdbn_fire(bn, neuron, x)
    bn.moment_reducer = lambda x, mean, var: (mean, var, x.numel() / x.shape[1])
    tdbn_fire(bn, neuron, x)
    assert not calls
    bn.moment_reducer = None
    with pytest.raises(TypeError):  # the patched kernel returned None: proves the fused path is taken
        tdbn_fire(bn, neuron, x) + 1
    assert calls == [1]


def test_autocast_keeps_the_unfused_rounding() -> None:
    bn, neuron = _layer(3, 3, False)
    x = torch.randn(4, 2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x.to(torch.bfloat16)
        assert torch.equal(tdbn_fire(bn, neuron, xb), neuron(copy.deepcopy(bn)(xb)))


def test_opcheck() -> None:
    bn, _ = _layer(3, 2, False)
    x = torch.randn(4, 2 * 3 * 10).requires_grad_()
    args = (0.6, 1e-5, 10, True, [0.6, 1.6], 1.0, 0.25, False)
    mean, var = torch.randn(3), torch.rand(3) + 0.5
    torch.library.opcheck(tdbn_mlf_forward_op, (x, mean, var, bn.weight, bn.bias, *args))
    grad = torch.randn(4, 60)
    torch.library.opcheck(
        tdbn_mlf_backward_op, (x.detach(), grad, mean, var, bn.weight.detach(), bn.bias.detach(), *args)
    )


def test_parameter_gradients_are_bit_identical_across_reruns() -> None:
    """Per-thread partial sums are added in thread order: reruns (trainer.deterministic) agree bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(3):
            bn, neuron = _layer(8, 3, False, seed=3)
            x = (
                torch.randn(6, 4, 8, 48, 48, generator=torch.Generator().manual_seed(5)) * 2
            ).requires_grad_()
            tdbn_fire(bn, neuron, x).sum().backward()
            grads.append((bn.weight.grad, bn.bias.grad, x.grad))
        for other in grads[1:]:
            assert all(torch.equal(a, b) for a, b in zip(grads[0], other, strict=True))
    finally:
        torch.set_num_threads(threads)
