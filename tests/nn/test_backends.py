"""Exact-boundary parity for EVERY mlf() backend: potentials that sit on a threshold or on a
surrogate-window edge must compare with the reference's strictness (``u > th`` fires, ``u <= th``
keeps, ``|u - th| < width/2`` passes gradient) in the forward and the backward of each backend."""

from __future__ import annotations

import pytest
import torch

from mlfsnn import mlf, mlf_reference
from mlfsnn.kernels import fused_unavailable_reason
from mlfsnn.nn.neurons import MLF_BACKENDS


@pytest.fixture(params=MLF_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "fused" and fused_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("no C compiler: the fused CPU kernel cannot be built here")
    return request.param


def _assert_matches(backend: str, x: torch.Tensor, **kw) -> None:
    grad = torch.randn_like(x)
    outs, grads = [], []
    for fn, extra in ((mlf_reference, {}), (mlf, {"backend": backend})):
        xg = x.detach().clone().requires_grad_()
        out = fn(xg, **kw, **extra)
        out.backward(grad)
        outs.append(out.detach())
        grads.append(xg.grad)
    assert torch.equal(outs[1], outs[0])
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)


def _threshold_hugging_inputs(threshold: float, decay: float, n: int = 4096) -> torch.Tensor:
    """Two steps where ``(decay * x0) + x1`` lands exactly on, or one ulp beside, the threshold.

    A kernel that fuses the expression into an FMA skips the rounding of ``decay * x0`` and pushes
    some of these across the threshold.
    """
    th = torch.tensor(threshold)
    x0 = torch.rand(n) * threshold * 0.99  # below threshold: the first step must not fire
    x1 = th - decay * x0  # fp32 ops, same rounding as the reference's
    x1 = torch.cat([x1, torch.nextafter(x1, th + 1), torch.nextafter(x1, th - 1)])
    x0 = x0.repeat(3)
    return torch.stack([x0, x1])


@pytest.mark.parametrize("decay", [0.3, 0.7, 0.9])
def test_values_at_thresholds(backend: str, decay: float) -> None:
    x = _threshold_hugging_inputs(0.6, decay)
    u1 = decay * x[0] + x[1]
    assert (u1 == torch.tensor(0.6)).any(), "the inputs must actually hit the threshold"
    for levels in (1, 3):
        _assert_matches(backend, x, levels=levels, threshold=0.6, decay=decay)


def test_dyadic_values_hit_levels_and_windows_exactly(backend: str) -> None:
    # Multiples of 1/64 with decay 0.5 make every potential exact, so many sit on a threshold or on
    # a surrogate-window edge: both comparisons must match the reference's strictness.
    x = torch.randint(-64, 160, (12, 500)).float() / 64
    for detach in (False, True):
        _assert_matches(backend, x, levels=4, threshold=0.5, width=0.25, decay=0.5, detach_reset=detach)
