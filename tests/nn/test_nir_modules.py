"""to_nir on any network built from the library's blocks, not only SpikingResNet (issue 23).

Each net is exported in both forms and read back by from_nir: every spike identical in float64,
logits within 1e-5 in float32. What has no NIR form is refused in one line naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mlfsnn import MLF, TdBatchNorm, from_nir, to_nir
from mlfsnn.errors import ConfigError
from mlfsnn.nn.nir_trace import NIRExportError
from mlfsnn.nn.resnet import fold
from nir_utils import mlf_spikes

nir = pytest.importorskip("nir")
T, B = 3, 4


class Residual(nn.Module):
    """A user's block: conv-tdBN-MLF twice, a sum with its input, a tdBN with no conv before it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.sn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), TdBatchNorm(c), MLF(2)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), TdBatchNorm(c)
        self.bn3, self.sn3 = TdBatchNorm(c), MLF(2, decay=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(fold(self.conv2, self.sn1(self.bn1(fold(self.conv1, x)))))
        return self.sn3(self.bn3(h + x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential()  # containers are walked through
        self.conv, self.bn, self.sn = nn.Conv2d(2, 4, 3, padding=1), TdBatchNorm(4), MLF(2)
        self.blocks = nn.Sequential(Residual(4), nn.Dropout(0.2))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.sn(self.bn(fold(self.conv, x)))
        h = fold(self.pool, self.blocks(h)).flatten(2)
        out = fold(self.fc, h)
        total = out[0].clone()
        for t in range(1, out.shape[0]):
            total += out[t]
        return total / out.shape[0]


class MLP(nn.Module):
    """1-D input: Linear layers stay Affine nodes in both forms."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn1, self.sn1 = nn.Linear(6, 8), TdBatchNorm(8), MLF(3)
        self.fc2 = nn.Linear(8, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold(self.fc2, self.sn1(self.bn1(fold(self.fc1, x)))).mean(0)


def _prepared(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, TdBatchNorm):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.7, 1.3, generator=g)
            m.bias.data.normal_(0.0, 0.1, generator=g)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 2.0 / m.weight[0].numel() ** 0.5, generator=g)
    return model.eval(), torch.rand(T, B, *shape, generator=g) * 2


_spikes = mlf_spikes


NETS = {"residual": (Net, (2, 8, 8)), "mlp": (MLP, (6,))}


@pytest.mark.parametrize("form", ["portable", "spec"])
@pytest.mark.parametrize("key", list(NETS))
def test_round_trip_exact_in_float64_and_close_in_float32(key: str, form: str) -> None:
    make, shape = NETS[key]
    model, x = _prepared(make(), shape)
    want, want_spikes = _spikes(model, x)
    got, got_spikes = _spikes(from_nir(to_nir(model, shape, form=form)), x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    model.double()
    want, want_spikes = _spikes(model, x.double())
    net = from_nir(to_nir(model, shape, dtype=np.float64, form=form), dtype=torch.float64)
    got, got_spikes = _spikes(net, x.double())
    assert sorted(got_spikes) == sorted(want_spikes) and sum(float(s.sum()) for s in want_spikes.values()) > 0
    for name, s in want_spikes.items():
        assert torch.equal(got_spikes[name].reshape(s.shape), s), name
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_what_the_graph_holds() -> None:
    model, _ = _prepared(Net(), (2, 8, 8))
    g = to_nir(model, (2, 8, 8))
    assert {type(n).__name__ for n in g.nodes.values()} == {"Input", "Conv2d", "LIF", "Output"}
    # the sum h + x feeds the standalone tdBN (a diagonal 1x1 convolution) in the model's order
    into = [s for s, d in g.edges if d == "blocks.0.bn3"]
    assert into == ["blocks.0.conv2", "sn.level0", "sn.level1"] and g.nodes["blocks.0.bn3"].weight.shape == (
        4,
        4,
        1,
        1,
    )
    assert g.nodes["pool"].weight.shape == (4, 4, 4, 4)  # the 2x2 adaptive pool: a diagonal 4x4 conv
    assert g.nodes["fc"].weight.shape == (3, 4, 2, 2) and "block" not in g.metadata
    spec = to_nir(model, (2, 8, 8), form="spec")
    assert {"AvgPool2d", "Flatten", "Affine"} <= {type(n).__name__ for n in spec.nodes.values()}
    mlp = to_nir(_prepared(MLP(), (6,))[0], (6,))
    assert {type(n).__name__ for n in mlp.nodes.values()} == {"Input", "Affine", "LIF", "Output"}
    assert list(mlp.nodes) == ["input", "fc1", *(f"sn1.level{k}" for k in range(3)), "fc2", "output"]


def test_the_model_is_read_not_changed() -> None:
    model, _ = _prepared(Net(), (2, 8, 8))
    model.train()
    model.blocks[0].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    to_nir(model, (2, 8, 8))
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _Scaled(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op, self.conv, self.sn = op, nn.Conv2d(1, 2, 3, padding=1), MLF(1)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.sn(fold(self.conv, x))
        if self.op == "mul":
            h = h * 2
        if self.op == "cat":
            h = torch.cat([h, h], 2)
        if self.op == "folded":
            return self.sn(fold(self.conv, x).flatten(0, 1)).mean(0)
        if self.op == "steps":
            return h
        return h.mean(0)


@pytest.mark.parametrize(
    ("model", "needles"),
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)), ["module 1 (ReLU), 2 (MaxPool2d):"]),
        (_Scaled("mul"), ["tensor operation mul", "the model's forward"]),
        (_Scaled("cat"), ["tensor operation cat"]),
        (_Scaled("steps"), ["mean over time steps"]),
        (_Scaled("folded"), ["MLF on time folded into batch"]),
    ],
)
def test_unsupported_networks_are_one_line(model: nn.Module, needles: list[str]) -> None:
    with pytest.raises(NIRExportError) as info:
        to_nir(model, (1, 4, 4))
    message = str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    assert "\n" not in message and all(n in message for n in needles), message


def test_a_module_called_twice_is_two_layers() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.sn = nn.Conv2d(1, 1, 1), MLF(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.sn(fold(self.conv, self.sn(fold(self.conv, x)))).mean(0)

    model, x = _prepared(Twice(), (1, 2, 2))
    g = to_nir(model, (1, 2, 2))
    assert [n for n in g.nodes if n not in ("input", "output")] == [
        "conv",
        "sn.level0",
        "conv_1",
        "sn_1.level0",
    ]
    torch.testing.assert_close(from_nir(g)(x).flatten(1), model(x).flatten(1), rtol=0, atol=1e-6)
