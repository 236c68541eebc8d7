"""Shared by the NIR tests: nets with realistic eval-mode activity, and their spikes per MLF layer."""

from __future__ import annotations

import torch
from torch import nn

from mlfsnn.nn import MLF, TdBatchNorm


def settle_tdbn(model: nn.Module, calibration: torch.Tensor, g: torch.Generator) -> nn.Module:
    """``model`` in eval mode with tdBN running statistics of one real batch and random affines."""
    bns = [m for m in model.modules() if isinstance(m, TdBatchNorm)]
    for bn in bns:
        bn.momentum = 1.0  # running statistics := this batch's, so eval-mode activity is realistic
    model.train()
    with torch.no_grad():
        model(calibration)
    for bn in bns:
        bn.momentum = 0.1
        if bn.affine:
            bn.weight.data.uniform_(0.7, 1.3, generator=g)
            bn.bias.data.normal_(0.0, 0.1, generator=g)
    return model.eval()


Spikes = dict[str, torch.Tensor]


def mlf_spikes(model: nn.Module, x: torch.Tensor, sep: str = ".") -> tuple[torch.Tensor, Spikes]:
    """Logits and every MLF layer's spike counts ``[T, B, ...]``, by module name (``.`` as ``sep``)."""
    spikes: Spikes = {}

    def keep(name: str) -> object:
        return lambda module, args, out: spikes.__setitem__(name.replace(".", sep), out.detach().clone())

    hooks = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if isinstance(m, MLF)]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return logits, spikes
