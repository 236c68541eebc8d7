"""Data-parallel training with torch.distributed, launched by torchrun.

``torchrun --nproc_per_node=N -m mlfsnn.train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; every
process runs the same program, rank 0 alone writes files. ``trainer.batch_size`` stays the *global*
batch: each of the N processes takes ``batch_size / N`` samples per step, so a recipe means the same
thing on one GPU or eight.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..nn.tdbn import TdBatchNorm
from .rank import env_rank, env_world_size

__all__ = [
    "PeerLost",
    "all_reduce_sum",
    "broadcast_object",
    "enable_sync_tdbn",
    "env_rank",
    "env_world_size",
    "init_distributed",
    "is_distributed",
    "rank_zero_first",
    "shutdown",
]


class PeerLost(RuntimeError):
    """Another process of the job died or hung: the collective timed out or its connection broke."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_type: str, timeout_s: float | None = None) -> tuple[int, int, int]:
    """Join the torchrun process group (nccl on GPU, gloo on CPU); returns (rank, world, local_rank).

    ``timeout_s`` bounds every collective: a hung peer (stopped, deadlocked) then ends the job instead
    of leaving the others waiting for the backend's 30-minute default.
    """
    if (
        "WORLD_SIZE" not in os.environ
        and os.environ.get("SUBMITIT_FOLDER")
        and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    ):  # a multi-task SLURM job from the submitit launcher: map its task ids to torch's variables
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = env_world_size()
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not is_distributed():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group(backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), local_rank


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. building a frame cache), the others after it, on a cache hit."""
    if is_distributed() and dist.get_rank() != 0:
        dist.barrier()
    yield
    if is_distributed() and dist.get_rank() == 0:
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few Python numbers over all ranks (identity when not distributed)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' upstream grads."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _MomentReducer:
    """Global tdBN moments with autograd through the all-reduces.

    Two passes (the global mean, then the global sum of squared deviations) give the statistics of
    the concatenated global batch as accurately as one process would compute them, so N processes
    with ``trainer.sync_bn=true`` match one process with the same global batch.
    """

    def __call__(self, x: Tensor, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor, float]:
        all_reduce = _AllReduceSum.apply
        dims = [0, *range(2, x.dim())]
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() / x.shape[1])])
        total = all_reduce(local)
        n = total[-1]
        g_mean = (total[:-1] / n).view(mean.shape)
        g_var = all_reduce(((x - g_mean) ** 2).sum(dims)).view(var.shape) / n
        return g_mean, g_var, float(n.detach())


def enable_sync_tdbn(model: nn.Module) -> int:
    """Synchronise every tdBN's batch moments across ranks; returns how many layers were switched."""
    reducer = _MomentReducer()
    count = 0
    for m in model.modules():
        if isinstance(m, TdBatchNorm):
            m.moment_reducer = reducer
            count += 1
    return count
