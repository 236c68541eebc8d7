"""Threshold-dependent batch normalisation (tdBN), exactly as the MLF release computes it.

Over ``x: [T, B, C, *spatial]`` with statistics per channel over time, batch and space::

    y = alpha * threshold * (x - mean) / (sqrt(var) + eps) * gamma + beta

Training normalises with the biased batch variance and updates ``running_var`` with the unbiased
one (``var * n / (n - 1)``); eval uses the running statistics. Note that ``eps`` is added to the
standard deviation, not to the variance (docs/method.md §2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TdBatchNorm"]


class TdBatchNorm(nn.BatchNorm2d):
    """tdBN over time-first input; a ``BatchNorm2d`` subclass so state-dict keys stay standard.

    Args:
        num_features: channels C.
        threshold: the neuron threshold the output scale follows (``alpha * threshold``).
        alpha: 1 in the MLF release (the tdBN paper uses ``1/sqrt(2)`` before residual additions).
        eps, momentum, affine: as in ``nn.BatchNorm2d`` (``momentum=None``: cumulative average).
    """

    def __init__(
        self,
        num_features: int,
        threshold: float = 0.6,
        alpha: float = 1.0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=True)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        # Set by mlfsnn.distributed.enable_sync_tdbn: (x, mean, var) -> global (mean, var, n).
        self.moment_reducer = None

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 3 or x.shape[2] != self.num_features:
            raise ValueError(
                f"TdBatchNorm({self.num_features}) expects [T, B, {self.num_features}, ...], "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        shape, dtype = x.shape, x.dtype
        # Fold time into batch: [T*B, C, ...], the layout the release normalises.
        x = x.flatten(0, 1)
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics in half precision are too coarse
        view = (1, -1) + (1,) * (x.dim() - 2)
        mean, var = self.statistics(x)
        y = self.alpha * self.threshold * (x - mean) / (torch.sqrt(var) + self.eps)
        if self.affine:
            y = y * self.weight.view(view) + self.bias.view(view)
        return y.reshape(shape).to(dtype)

    def statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, var)`` shaped ``[1, C, 1, ...]`` that normalise ``x: [T*B, C, ...]``: this batch's in
        training (running statistics updated), the running ones in eval."""
        dims = [0, *range(2, x.dim())]
        view = (1, -1) + (1,) * (x.dim() - 2)
        if not self.training:
            return self.running_mean.view(view), self.running_var.view(view)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, unbiased=False)
        n = x.numel() / x.shape[1]
        if n <= 1:
            raise ValueError(
                f"TdBatchNorm needs more than 1 value per channel in training, got shape {tuple(x.shape)}"
            )
        if self.moment_reducer is not None:  # data-parallel: moments of the global batch
            mean, var, n = self.moment_reducer(x, mean, var)
        self._update_running_stats(mean, var, n)
        return mean, var

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        mean, var = mean.flatten(), var.flatten()
        self.running_mean.copy_(factor * mean + (1 - factor) * self.running_mean)
        self.running_var.copy_(factor * var * n / (n - 1) + (1 - factor) * self.running_var)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}, alpha={self.alpha}"
