"""The fused kernels as torch.library custom ops: registration, fake shapes, zero graph breaks, and
bit-identical spikes and gradients when compiled."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch._subclasses.fake_tensor import FakeTensorMode

import mlfsnn.kernels as kernels
from mlfsnn import create_model, mlf, mlf_reference
from mlfsnn.kernels import mlf_backward_op, mlf_forward_op

ARGS = ([0.6, 1.6, 2.6], 1.0, 0.25, False)


@pytest.fixture(scope="module", autouse=True)
def _kernel_built() -> None:
    if kernels.fused_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no C compiler: the fused CPU kernel cannot be built here")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.mark.parametrize("detach_reset", [False, True])
def test_opcheck_forward(detach_reset: bool) -> None:
    x = (torch.randn(6, 37) * 1.5).requires_grad_()
    torch.library.opcheck(mlf_forward_op, (x, [0.3, 0.8], 0.5, 0.9, detach_reset))
    torch.library.opcheck(mlf_forward_op, (x.detach(), *ARGS))


def test_opcheck_backward() -> None:
    x, grad = torch.randn(5, 11), torch.randn(5, 11)
    torch.library.opcheck(mlf_backward_op, (x, grad, *ARGS))


def test_fake_tensors_give_shapes_without_running_the_kernel() -> None:
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.empty(7, 13))
        out = mlf_forward_op(x, *ARGS)
        grad_x = mlf_backward_op(x, out, *ARGS)
    assert out.shape == grad_x.shape == (7, 13)
    assert out.dtype == grad_x.dtype == torch.float32


def test_op_matches_the_reference_exactly() -> None:
    x = torch.randn(9, 4, 25) * 1.5 + 0.5
    g = torch.randn_like(x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = mlf(xa, backend="fused")
    ref = mlf_reference(xb)
    assert torch.equal(out, ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_ds_resnet_traces_with_zero_graph_breaks(train: bool) -> None:
    model = create_model("dvs_gesture", widths=(4, 8, 8)).train(train)
    explained = dynamo.explain(model)(torch.randn(3, 2, 2, 16, 16))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_compiled_neuron_is_bit_identical(levels: int, detach_reset: bool) -> None:
    """AOTAutograd places the registered backward op: same spikes, same gradient bits as eager."""

    def neuron(x: torch.Tensor) -> torch.Tensor:
        return mlf(x, levels=levels, detach_reset=detach_reset, backend="fused")

    compiled = torch.compile(neuron, backend="aot_eager", fullgraph=True)
    x = torch.randn(8, 3, 5, 7) * 1.5 + 0.4
    g = torch.randn_like(x)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager_out, compiled_out = neuron(xa), compiled(xb)
    assert torch.equal(eager_out, compiled_out)
    eager_out.backward(g)
    compiled_out.backward(g)
    assert torch.equal(xa.grad, xb.grad)


def test_compiled_model_matches_eager_forward_and_backward() -> None:
    """A whole (tiny) DS-ResNet through AOTAutograd: the neurons inside the graph are the same ops."""
    torch.manual_seed(0)
    model = create_model("dvs_gesture", widths=(4, 8, 8))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 2, 2, 16, 16)
    out_eager = model(x)
    out_eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_compiled = compiled(x)
    out_compiled.square().sum().backward()
    assert torch.equal(out_eager, out_compiled)
    for a, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a, atol=1e-5, rtol=1e-4)
