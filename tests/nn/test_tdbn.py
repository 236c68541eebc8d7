"""tdBN against the formula of docs/method.md §2, computed by hand in the tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlfsnn import TdBatchNorm


def channel_view(x: torch.Tensor) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector against ``[T, B, C, *spatial]``."""
    return (1, 1, -1) + (1,) * (x.dim() - 3)


def per_channel(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, *spatial]`` -> ``[C, n]`` with n = T * B * prod(spatial)."""
    return x.movedim(2, 0).reshape(x.shape[2], -1)


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean, biased variance and unbiased variance, summed by hand."""
    flat = per_channel(x)
    n = flat.shape[1]
    mean = flat.sum(1) / n
    sq = ((flat - mean[:, None]) ** 2).sum(1)
    return mean, sq / n, sq / (n - 1)


def hand_tdbn(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    threshold: float,
    alpha: float,
    eps: float,
) -> torch.Tensor:
    v = channel_view(x)
    y = alpha * threshold * (x - mean.view(v)) / (var.view(v).sqrt() + eps)
    if gamma is not None:
        y = y * gamma.view(v) + beta.view(v)
    return y


def make_bn(channels: int, **kw: object) -> TdBatchNorm:
    bn = TdBatchNorm(channels, **kw)
    if bn.affine:
        with torch.no_grad():
            bn.weight.copy_(torch.rand(channels) + 0.5)
            bn.bias.copy_(torch.randn(channels))
    return bn


SHAPES = [(3, 4, 5, 6, 6), (2, 3, 4, 5), (4, 6, 3)]  # [T,B,C,H,W], [T,B,C,L], [T,B,C]


@pytest.mark.parametrize("shape", SHAPES)
def test_train_mode_matches_formula(shape: tuple[int, ...]) -> None:
    channels = shape[2]
    bn = make_bn(channels, threshold=0.8, alpha=0.7, eps=1e-4)
    # Per-channel offsets and scales so that the statistics differ between channels.
    x = torch.randn(shape) * (torch.rand(channels) * 3 + 0.5).view(channel_view(torch.empty(shape)))
    x = x + torch.randn(channels).view(channel_view(x)) * 2
    y = bn(x)
    mean, var_b, _ = batch_moments(x)
    expected = hand_tdbn(x, mean, var_b, bn.weight.detach(), bn.bias.detach(), 0.8, 0.7, 1e-4)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_statistics_are_over_time_batch_and_space() -> None:
    # Channel 0 of time step 0 is shifted by +10: the channel mean moves by 10 / T, so the output of
    # step 1 changes too (statistics pooled over time). Normalising per step would leave step 1 alone.
    bn = TdBatchNorm(2, affine=False)
    x = torch.randn(2, 3, 2, 4, 4)
    y0 = bn(x)
    x2 = x.clone()
    x2[0, :, 0] += 10.0
    y1 = bn(x2)
    assert not torch.allclose(y0[1, :, 0], y1[1, :, 0], atol=1e-3)
    torch.testing.assert_close(y0[:, :, 1], y1[:, :, 1])  # channel 1 untouched


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]])
def test_gradients_match_autograd_of_formula(shape: tuple[int, ...]) -> None:
    channels = shape[2]
    bn = make_bn(channels, threshold=0.6, alpha=0.5, eps=1e-3).double()
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    upstream = torch.randn(shape, dtype=torch.float64)
    bn(x).backward(upstream)

    x_ref = x.detach().clone().requires_grad_(True)
    gamma = bn.weight.detach().clone().requires_grad_(True)
    beta = bn.bias.detach().clone().requires_grad_(True)
    flat = per_channel(x_ref)
    mean = flat.mean(1)
    var = ((flat - mean[:, None]) ** 2).mean(1)
    hand_tdbn(x_ref, mean, var, gamma, beta, 0.6, 0.5, 1e-3).backward(upstream)

    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(bn.weight.grad, gamma.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(bn.bias.grad, beta.grad, atol=1e-10, rtol=1e-8)


def test_running_stats_exponential_average_with_unbiased_variance() -> None:
    channels = 3
    bn = make_bn(channels)
    assert bn.momentum == 0.1
    run_mean = torch.zeros(channels, dtype=torch.float64)
    run_var = torch.ones(channels, dtype=torch.float64)
    for step in range(4):
        # Small batches (n = 2*2*3*3 = 36), so n/(n-1) is a 3 % effect: biased would be caught.
        x = torch.randn(2, 2, channels, 3, 3) * (step + 1) + step
        bn(x)
        mean, _, var_unbiased = batch_moments(x.double())
        run_mean = 0.9 * run_mean + 0.1 * mean
        run_var = 0.9 * run_var + 0.1 * var_unbiased
    assert bn.num_batches_tracked.item() == 4
    torch.testing.assert_close(bn.running_mean.double(), run_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), run_var, atol=1e-5, rtol=1e-5)


def test_momentum_none_is_cumulative_average() -> None:
    channels = 2
    bn = make_bn(channels, momentum=None)
    means, variances = [], []
    for step in range(5):
        x = torch.randn(3, 2, channels, 2, 2) * (0.5 + step) - step
        bn(x)
        mean, _, var_unbiased = batch_moments(x.double())
        means.append(mean)
        variances.append(var_unbiased)
    torch.testing.assert_close(bn.running_mean.double(), torch.stack(means).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), torch.stack(variances).mean(0), atol=1e-5, rtol=1e-5)


def test_eval_uses_running_stats_and_does_not_update_them() -> None:
    channels = 4
    bn = make_bn(channels, threshold=0.6, alpha=1.0, eps=1e-5)
    for _ in range(3):
        bn(torch.randn(2, 3, channels, 4, 4) * 2 + 1)
    bn.eval()
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    tracked = bn.num_batches_tracked.clone()
    x = torch.randn(2, 3, channels, 4, 4) * 5 - 3  # very different from the running stats
    y = bn(x)
    expected = hand_tdbn(x, rm, rv, bn.weight.detach(), bn.bias.detach(), 0.6, 1.0, 1e-5)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(bn.running_mean, rm) and torch.equal(bn.running_var, rv)
    assert torch.equal(bn.num_batches_tracked, tracked)
    # In eval mode the output of one sample does not depend on the rest of the batch.
    torch.testing.assert_close(bn(x[:, :1]), y[:, :1])


def test_affine_false_has_no_parameters() -> None:
    bn = TdBatchNorm(3, threshold=0.5, affine=False)
    assert list(bn.parameters()) == []
    assert bn.weight is None and bn.bias is None
    x = torch.randn(2, 2, 3, 3, 3) * 3 + 2
    mean, var_b, _ = batch_moments(x)
    torch.testing.assert_close(bn(x), hand_tdbn(x, mean, var_b, None, None, 0.5, 1.0, 1e-5))


def test_default_affine_parameters() -> None:
    bn = TdBatchNorm(5)
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert torch.equal(bn.weight, torch.ones(5)) and torch.equal(bn.bias, torch.zeros(5))
    assert (bn.threshold, bn.alpha, bn.eps, bn.momentum) == (0.6, 1.0, 1e-5, 0.1)
    # State-dict keys are those of BatchNorm2d.
    assert set(bn.state_dict()) == set(nn.BatchNorm2d(5).state_dict())


def test_eps_is_added_to_std_not_variance() -> None:
    # Per-channel std 0.1 and eps 0.01: std + eps = 0.11, but sqrt(var + eps) = 0.141.
    eps = 1e-2
    bn = TdBatchNorm(2, threshold=1.0, eps=eps, affine=False)
    x = torch.randn(4, 4, 2, 4, 4, dtype=torch.float64)
    flat = per_channel(x)
    x = (x - flat.mean(1).view(1, 1, -1, 1, 1)) / flat.std(1, unbiased=False).view(1, 1, -1, 1, 1) * 0.1
    bn = bn.double()
    y = bn(x)
    on_std = x / (0.1 + eps)
    on_var = x / (0.1**2 + eps) ** 0.5
    torch.testing.assert_close(y, on_std, atol=1e-9, rtol=1e-9)
    assert (y - on_var).abs().max() > 0.1
    # A constant channel (zero variance) maps to 0, not NaN.
    const = torch.full((2, 2, 2, 3, 3), 4.0)
    assert torch.equal(TdBatchNorm(2, eps=1e-5)(const), torch.zeros_like(const))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 5), (2, 3, 2, 5, 5), (2, 3, 4), (2, 3, 5, 4)])
def test_wrong_channel_count_message(shape: tuple[int, ...]) -> None:
    bn = TdBatchNorm(3)
    expected_shape = str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"TdBatchNorm\(3\) expects \[T, B, 3, \.\.\.\].*{expected_shape}"):
        bn(torch.randn(shape))


@pytest.mark.parametrize("shape", [(3,), (4, 3)])
def test_too_few_dims(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="TdBatchNorm"):
        TdBatchNorm(3)(torch.randn(shape))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_input_keeps_dtype_and_stats_in_fp32(dtype: torch.dtype) -> None:
    bn = make_bn(3)
    x = (torch.randn(2, 4, 3, 4, 4) * 2 + 1).to(dtype)
    y = bn(x)
    assert y.dtype == dtype
    mean, var_b, var_u = batch_moments(x.double())
    expected = hand_tdbn(
        x.double(), mean, var_b, bn.weight.detach().double(), bn.bias.detach().double(), 0.6, 1.0, 1e-5
    )
    torch.testing.assert_close(y.double(), expected, atol=2e-2, rtol=1e-2)
    assert bn.running_mean.dtype == torch.float32
    torch.testing.assert_close(bn.running_mean.double(), 0.1 * mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), 0.9 + 0.1 * var_u, atol=1e-5, rtol=1e-5)


def test_single_value_per_channel_in_training() -> None:
    # n/(n-1) would divide by zero and leave running_var NaN; like nn.BatchNorm2d, refuse instead.
    bn = TdBatchNorm(2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, 1, 2, 1, 1))
    assert torch.isfinite(bn.running_var).all()
