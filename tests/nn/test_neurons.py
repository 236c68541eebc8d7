"""MLF neuron: the library against a deliberately plain reference written here (docs/method.md §1).

The reference below shares no code with ``mlfsnn``: its own surrogate ``autograd.Function``, Python
lists of per-level potentials, one autograd op chain per level per step, no vectorisation.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import mlfsnn
from mlfsnn import MLF, mlf, mlf_reference
from mlfsnn.nn.neurons import MLF_BACKENDS

# ---------------------------------------------------------------------------------------------
# The plain reference
# ---------------------------------------------------------------------------------------------


class RectSpike(torch.autograd.Function):
    """H(u - th) forward; rectangular surrogate 1[|u - th| < width/2] / width backward."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, th: float, width: float) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.th = th
        ctx.width = width
        return (u > th).to(u.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (u,) = ctx.saved_tensors
        inside = ((u - ctx.th).abs() < ctx.width / 2).to(grad.dtype)
        return grad * inside / ctx.width, None, None


def plain_mlf(
    x: torch.Tensor, levels: int, threshold: float, width: float, decay: float, detach_reset: bool
) -> torch.Tensor:
    """u_k[t] = decay * u_k[t-1] * (1 - o_k[t-1]) + x[t];  o_k[t] = H(u_k[t] - th_k);  s = sum_k o_k."""
    us: list[torch.Tensor] = []
    os_: list[torch.Tensor] = []
    steps = []
    for t in range(x.shape[0]):
        count = None
        for k in range(levels):
            th = threshold + k * width
            if t == 0:
                u = x[0]  # u_k[-1] = 0
            else:
                prev_o = os_[k].detach() if detach_reset else os_[k]
                u = decay * us[k] * (1 - prev_o) + x[t]
            o = RectSpike.apply(u, th, width)
            if t == 0:
                us.append(u)
                os_.append(o)
            else:
                us[k] = u
                os_[k] = o
            count = o if count is None else count + o
        steps.append(count)
    return torch.stack(steps)


def run_mlf(impl: str, x: torch.Tensor, **kw: Any) -> torch.Tensor:
    if impl == "module":
        return MLF(**kw)(x)
    if impl == "functional":
        return mlf(x, **kw)
    if impl == "library_reference":
        return mlf_reference(x, **kw)
    if impl == "plain":
        return plain_mlf(x, **kw)
    if impl.startswith("functional-"):
        return mlf(x, backend=impl.removeprefix("functional-"), **kw)
    raise AssertionError(impl)


# mlf() dispatches to several backends (its default is a compiled kernel): every test below runs on
# each of them by name, so a mutation in one backend cannot hide behind another.
IMPLS = ["module", "library_reference", *(f"functional-{b}" for b in MLF_BACKENDS)]

# (threshold, width, decay): the paper default, decay 0 (no memory), decay 1 (no leak), odd widths.
NEURON_SETTINGS = [
    (0.6, 1.0, 0.25),
    (0.3, 0.5, 0.0),
    (1.0, 0.25, 1.0),
    (0.5, 2.0, 0.9),
    (-0.2, 0.7, 0.5),
]


def random_currents(shape: tuple[int, ...], levels: int, threshold: float, width: float) -> torch.Tensor:
    """Uniform currents spanning below the first window to above the last one."""
    lo = threshold - width
    hi = threshold + (levels + 0.5) * width
    return torch.rand(shape) * (hi - lo) + lo


def compare_with_plain(
    impl: str, x: torch.Tensor, upstream: torch.Tensor, **kw: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    x_ref = x.detach().clone().requires_grad_(True)
    ref = plain_mlf(x_ref, **kw)
    ref.backward(upstream)

    x_lib = x.detach().clone().requires_grad_(True)
    out = run_mlf(impl, x_lib, **kw)
    out.backward(upstream)

    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out, ref.detach())
    torch.testing.assert_close(x_lib.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    return ref.detach(), x_ref.grad


# ---------------------------------------------------------------------------------------------
# Library vs plain reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize(("threshold", "width", "decay"), NEURON_SETTINGS)
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_matches_plain_reference(
    impl: str, levels: int, threshold: float, width: float, decay: float, detach_reset: bool
) -> None:
    kw = dict(levels=levels, threshold=threshold, width=width, decay=decay, detach_reset=detach_reset)
    x = random_currents((7, 3, 2, 3, 3), levels, threshold, width)
    upstream = torch.randn(x.shape)
    ref, grad = compare_with_plain(impl, x, upstream, **kw)
    # Not vacuous: every count 0..K occurs and some gradient passes.
    assert set(ref.unique().tolist()) == set(range(levels + 1))
    assert (grad != 0).float().mean() > 0.2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(1,), (1, 5), (1, 2, 3, 2, 2), (9,), (6, 4), (5, 2, 3, 2, 2)])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_shapes_including_single_step(impl: str, shape: tuple[int, ...], detach_reset: bool) -> None:
    kw = dict(levels=3, threshold=0.6, width=1.0, decay=0.25, detach_reset=detach_reset)
    x = random_currents(shape, 3, 0.6, 1.0)
    compare_with_plain(impl, x, torch.randn(shape), **kw)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_inputs(impl: str) -> None:
    kw = dict(levels=3, threshold=0.6, width=1.0, decay=0.5, detach_reset=False)
    # A transposed view: time is dim 1 of the storage.
    base = random_currents((4, 6, 5), 3, 0.6, 1.0).requires_grad_(True)
    x = base.transpose(0, 1)
    assert not x.is_contiguous()
    upstream = torch.randn(x.shape)
    out = run_mlf(impl, x, **kw)
    out.backward(upstream)

    base_ref = base.detach().clone().requires_grad_(True)
    ref = plain_mlf(base_ref.transpose(0, 1).contiguous(), **kw)
    ref.backward(upstream)
    assert torch.equal(out, ref.detach())
    torch.testing.assert_close(base.grad, base_ref.grad, atol=1e-5, rtol=1e-5)

    # A strided slice: every other sample and channel.
    base2 = random_currents((5, 8, 3, 4), 3, 0.6, 1.0).requires_grad_(True)
    x2 = base2[:, ::2, :, 1::2]
    assert not x2.is_contiguous()
    upstream2 = torch.randn(x2.shape)
    out2 = run_mlf(impl, x2, **kw)
    out2.backward(upstream2)
    base2_ref = base2.detach().clone().requires_grad_(True)
    ref2 = plain_mlf(base2_ref[:, ::2, :, 1::2], **kw)
    ref2.backward(upstream2)
    assert torch.equal(out2, ref2.detach())
    torch.testing.assert_close(base2.grad, base2_ref.grad, atol=1e-5, rtol=1e-5)
    assert (base2.grad[:, 1::2] == 0).all()  # untouched elements get no gradient


def test_reset_path_carries_gradient_unless_detached() -> None:
    """The two reset modes really differ (so the detach_reset comparisons above are meaningful)."""
    x = random_currents((8, 64), 3, 0.6, 1.0)
    upstream = torch.randn(x.shape)
    grads = []
    for detach in (False, True):
        xi = x.clone().requires_grad_(True)
        out = mlf(xi, levels=3, detach_reset=detach)
        out.backward(upstream)
        grads.append(xi.grad)
    assert not torch.allclose(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------
# Hand-checked cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", [*IMPLS, "plain"])
def test_hand_checked_constant_current_k2(impl: str) -> None:
    # K=2, threshold 0.5, width 1 -> th = 0.5, 1.5; decay 0.5; constant x = 1.0 (all exact in fp32).
    # level 0: u = 1 > 0.5 at every step -> fires every step, hard reset to 0 each time.
    # level 1: t0 u=1.0 (no), t1 u=0.5*1.0+1=1.5 (NOT > 1.5, strict), t2 u=0.5*1.5+1=1.75 (fires),
    #          t3 u=0*..+1=1.0 (no), t4 1.5 (no), t5 1.75 (fires).
    # It keeps integrating while level 0 resets: each level has its own reset.
    x = torch.ones(6, 1)
    out = run_mlf(impl, x, levels=2, threshold=0.5, width=1.0, decay=0.5, detach_reset=False)
    assert out.flatten().tolist() == [1, 1, 2, 1, 1, 2]


@pytest.mark.parametrize("impl", [*IMPLS, "plain"])
def test_strict_threshold_no_spike_at_equality(impl: str) -> None:
    kw = dict(levels=3, threshold=0.6, width=1.0, decay=0.25, detach_reset=False)
    th = torch.tensor([0.6, 1.6, 2.6])  # fp32 images of the level thresholds
    above = torch.nextafter(th, torch.full_like(th, math.inf))
    x = torch.stack([th, above]).reshape(1, 2, 3)  # T = 1: u = x
    out = run_mlf(impl, x, **kw)
    assert out[0, 0].tolist() == [0, 1, 2]  # exactly at th_k: level k does not fire
    assert out[0, 1].tolist() == [1, 2, 3]  # one ulp above: it does


@pytest.mark.parametrize("impl", [*IMPLS, "plain"])
def test_hard_reset(impl: str) -> None:
    # K=1, th 0.5, decay 1: x = 2, 0, 0.25, 0.25, 0.25.
    # t0 u=2 fires; t1 u = 1*2*(1-1)+0 = 0 (hard reset; a soft reset would leave 1.5 and fire);
    # t2 u=0.25; t3 u=0.5 (not > 0.5); t4 u=0.75 fires.
    x = torch.tensor([2.0, 0.0, 0.25, 0.25, 0.25])
    out = run_mlf(impl, x, levels=1, threshold=0.5, width=1.0, decay=1.0, detach_reset=False)
    assert out.tolist() == [1, 0, 0, 0, 1]


@pytest.mark.parametrize("impl", [*IMPLS, "plain"])
def test_reset_is_per_level(impl: str) -> None:
    # K=2, th 0.5 / 1.5, decay 1: x = 1.0, 0.75, 0.0.
    # t0: u0=1 fires, u1=1 does not.  t1: u0 = 0 + 0.75 fires (reset), u1 = 1 + 0.75 = 1.75 fires
    # (level 1 was not reset by level 0's spike).  t2: both reset -> 0 -> no spike.
    x = torch.tensor([1.0, 0.75, 0.0])
    out = run_mlf(impl, x, levels=2, threshold=0.5, width=1.0, decay=1.0, detach_reset=False)
    assert out.tolist() == [1, 2, 0]


@pytest.mark.parametrize("impl", [*IMPLS, "plain"])
def test_decay_zero_is_memoryless(impl: str) -> None:
    x = torch.tensor([0.55, 0.55, 1.7, 0.4, 5.0])
    out = run_mlf(impl, x, levels=3, threshold=0.6, width=1.0, decay=0.0, detach_reset=False)
    assert out.tolist() == [0, 0, 2, 0, 3]


# ---------------------------------------------------------------------------------------------
# Surrogate window
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", [*IMPLS, "plain"])
@pytest.mark.parametrize(
    ("threshold", "width", "xs", "expected_levels"),
    [
        # th = 0.5, 1.5, 2.5 -> windows (0,1), (1,2), (2,3): open, so the touching points 0, 1, 2, 3
        # belong to no window.
        (
            0.5,
            1.0,
            [-0.5, 0.0, 0.25, 0.5, 0.999, 1.0, 1.25, 2.0, 2.75, 3.0, 3.5],
            [0, 0, 1, 1, 1, 0, 1, 0, 1, 0, 0],
        ),
        # th = 1, 1.5, 2 -> windows (0.75,1.25), (1.25,1.75), (1.75,2.25); gradient 1/0.5 = 2 inside.
        (1.0, 0.5, [0.5, 0.75, 0.8, 1.25, 1.3, 1.75, 2.0, 2.25, 2.3], [0, 0, 1, 0, 1, 0, 1, 0, 0]),
    ],
)
def test_single_step_surrogate_window(
    impl: str, threshold: float, width: float, xs: list[float], expected_levels: list[int]
) -> None:
    x = torch.tensor(xs).reshape(1, -1).requires_grad_(True)
    out = run_mlf(impl, x, levels=3, threshold=threshold, width=width, decay=0.25, detach_reset=False)
    out.sum().backward()
    expected = torch.tensor(expected_levels, dtype=torch.float32) / width
    assert torch.equal(x.grad.flatten(), expected)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_single_step_gradient_region_is_union_of_windows(impl: str, levels: int) -> None:
    threshold, width = 0.6, 1.0
    x = torch.linspace(-2.0, 6.0, 4001).reshape(1, -1).requires_grad_(True)
    run_mlf(impl, x, levels=levels, threshold=threshold, width=width, decay=0.25).sum().backward()
    xd = x.detach().double()
    n_windows = sum(((xd - (threshold + k * width)).abs() < width / 2).double() for k in range(levels))
    # The float32 images of the window edges may differ from the float64 ones: ignore the few grid
    # points within 1e-6 of an edge.
    edges = torch.tensor([threshold + (k - 0.5) * width for k in range(levels + 1)], dtype=torch.float64)
    far = ((xd.reshape(-1, 1) - edges).abs() > 1e-6).all(1).reshape(xd.shape)
    assert torch.equal(x.grad.double()[far], (n_windows / width)[far])
    # The region with a gradient is K * width wide (the paper's argument against vanishing gradients).
    spacing = 8.0 / 4000
    assert (x.grad != 0).sum().item() * spacing == pytest.approx(levels * width, abs=3 * spacing)


# ---------------------------------------------------------------------------------------------
# Statelessness, no_grad, dtypes
# ---------------------------------------------------------------------------------------------


def test_stateless_repeated_calls() -> None:
    neuron = MLF(levels=3)
    x = random_currents((5, 4, 6), 3, 0.6, 1.0)
    first = neuron(x)
    second = neuron(x)
    assert torch.equal(first, second)
    # A different input in between does not leak into the next call either.
    neuron(x + 3.0)
    assert torch.equal(neuron(x), first)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_grad(impl: str) -> None:
    x = random_currents((4, 3, 5), 3, 0.6, 1.0)
    expected = plain_mlf(x, levels=3, threshold=0.6, width=1.0, decay=0.25, detach_reset=False)
    xg = x.clone().requires_grad_(True)
    with torch.no_grad():
        out = run_mlf(impl, xg, levels=3)
    assert out.grad_fn is None and not out.requires_grad
    assert torch.equal(out, expected)


def test_module_no_grad_without_requires_grad_input() -> None:
    x = random_currents((4, 3, 5), 3, 0.6, 1.0)
    out = MLF()(x)
    assert out.grad_fn is None


@pytest.mark.parametrize("impl", ["module", "functional"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_dtype_and_counts(impl: str, dtype: torch.dtype) -> None:
    x_half = random_currents((6, 4, 8), 3, 0.6, 1.0).to(dtype)
    x32 = x_half.float()  # the same values, exactly representable in fp32
    out_half = run_mlf(impl, x_half, levels=3)
    out32 = run_mlf(impl, x32, levels=3)
    assert out_half.dtype == dtype
    assert torch.equal(out_half.float(), out32)
    # With gradient, too.
    xg = x_half.clone().requires_grad_(True)
    out = run_mlf(impl, xg, levels=3)
    assert out.dtype == dtype and torch.equal(out.float(), out32)
    out.float().sum().backward()
    assert xg.grad is not None and xg.grad.dtype == dtype and torch.isfinite(xg.grad.float()).all()


def test_autocast_bf16_forward_backward() -> None:
    model = nn.Sequential(nn.Linear(8, 16), MLF(levels=3), nn.Linear(16, 4))
    x = torch.randn(5, 3, 8) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model[0](x)
        spikes = model[1](hidden)
        logits = model[2](spikes)
        loss = logits.float().mean()
    assert hidden.dtype == torch.bfloat16 and spikes.dtype == torch.bfloat16
    assert spikes.sum() > 0
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert model[0].weight.grad.abs().sum() > 0  # gradient went through the neuron


def test_float64_matches_reference() -> None:
    # 0.6 + 1e-12 > 0.6 in float64, but rounds to float32(0.6) (= th_0 in float32): no spike there.
    x = torch.tensor([[0.6 + 1e-12]], dtype=torch.float64)
    expected = plain_mlf(x, levels=1, threshold=0.6, width=1.0, decay=0.25, detach_reset=False)
    assert expected.item() == 1
    assert torch.equal(mlf_reference(x, levels=1), expected)
    assert torch.equal(mlf(x, levels=1), expected)


# ---------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------

INVALID = [
    (dict(levels=0), r"levels.*\b0\b"),
    (dict(levels=1.5), r"levels.*1\.5"),
    (dict(levels=True), r"levels.*True"),
    (dict(levels="3"), r"levels.*'3'"),
    (dict(width=0), r"width.*\b0\b"),
    (dict(width=-1), r"width.*-1"),
    (dict(decay=-0.1), r"decay.*-0\.1"),
    (dict(decay=1.5), r"decay.*1\.5"),
    (dict(threshold="0.6"), r"threshold.*'0\.6'"),
]


@pytest.mark.parametrize(("kwargs", "pattern"), INVALID)
def test_invalid_arguments_module(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        MLF(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(levels=1), dict(decay=0.0), dict(decay=1.0), dict(width=1e-3)])
def test_valid_boundary_arguments(kwargs: dict[str, Any]) -> None:
    MLF(**kwargs)


@pytest.mark.parametrize(("kwargs", "pattern"), INVALID[:2] + INVALID[4:6])
def test_invalid_arguments_functional(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        mlf(torch.randn(3, 2), **kwargs)


def test_public_api() -> None:
    assert mlfsnn.MLF is MLF and mlfsnn.mlf is mlf and mlfsnn.mlf_reference is mlf_reference
    assert MLF().thresholds == pytest.approx([0.6, 1.6, 2.6])
    neuron = MLF()
    assert (neuron.levels, neuron.threshold, neuron.width, neuron.decay, neuron.detach_reset) == (
        3,
        0.6,
        1.0,
        0.25,
        False,
    )
    assert list(neuron.parameters()) == [] and list(neuron.buffers()) == []
