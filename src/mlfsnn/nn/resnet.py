"""Spiking DS-ResNet (dormant-suppressed) and the plain spiking ResNet baseline.

All tensors are time first, ``[T, B, C, H, W]``. Convolutions, pooling and the classifier are
stateless, so they run once on time folded into batch; only the neurons walk the time axis.

Blocks (docs/method.md §3), with ``f = MLF(tdBN(conv(.)))``:

* ``ds``:    ``out = f(conv2(f(conv1(x)))) + shortcut(x)``, fire before the addition; the
  downsampling shortcut is ``f(conv1x1(x))`` (or ``tdBN(conv1x1(x))`` with ``shortcut_neuron=False``).
* ``plain``: ``out = MLF(tdBN(conv2(f(conv1(x)))) + shortcut(x))``, add then fire; the downsampling
  shortcut is ``tdBN(conv1x1(x))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ._args import ArgError
from .fused import tdbn_fire
from .neurons import MLF
from .tdbn import TdBatchNorm

__all__ = [
    "PAPER_NETS",
    "SpikingBasicBlock",
    "SpikingResNet",
    "check_model_args",
    "count_parameters",
    "create_model",
    "spiking_resnet",
    "training_activation_bytes",
    "unit_values",
    "valid_depths",
]

BLOCKS = ("ds", "plain")
DEFAULT_NEURON: dict[str, Any] = {"levels": 3, "threshold": 0.6, "width": 1.0, "decay": 0.25}


def fold(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a stateless layer to ``[T, B, ...]`` by folding time into batch."""
    return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def valid_depths(limit: int = 110) -> list[int]:
    return [6 * n + 2 for n in range(1, (limit - 2) // 6 + 1)]


class SpikingBasicBlock(nn.Module):
    """Two 3x3 conv-tdBN-MLF stages with a shortcut; see the module docstring for the variants."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        block: str,
        neuron: Mapping[str, Any],
        shortcut_neuron: bool = True,
    ) -> None:
        super().__init__()
        th = neuron["threshold"]
        self.block = block
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = TdBatchNorm(planes, threshold=th)
        self.sn1 = MLF(**neuron)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = TdBatchNorm(planes, threshold=th)
        self.sn2 = MLF(**neuron)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            layers: list[nn.Module] = [
                nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                TdBatchNorm(planes, threshold=th),
            ]
            if block == "ds" and shortcut_neuron:
                layers.append(MLF(**neuron))
            self.shortcut = nn.Sequential(*layers)

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.shortcut is None:
            return x
        conv, bn, *neuron = self.shortcut
        return tdbn_fire(bn, neuron[0], fold(conv, x)) if neuron else bn(fold(conv, x))

    def forward(self, x: Tensor) -> Tensor:
        out = tdbn_fire(self.bn1, self.sn1, fold(self.conv1, x))
        out = fold(self.conv2, out)
        if self.block == "ds":
            return tdbn_fire(self.bn2, self.sn2, out) + self._shortcut(x)
        return self.sn2(self.bn2(out) + self._shortcut(x))


class SpikingResNet(nn.Module):
    """CIFAR-style spiking ResNet: stem, three stages of ``n`` blocks, average pool, linear.

    Input ``[T, B, C, H, W]``; output logits ``[B, num_classes]``, the classifier applied at every
    step and averaged over T.
    """

    def __init__(
        self,
        depth: int = 20,
        widths: tuple[int, int, int] = (64, 128, 256),
        in_channels: int = 3,
        num_classes: int = 10,
        block: str = "ds",
        neuron: Mapping[str, Any] | None = None,
        input_norm: bool = False,
        shortcut_neuron: bool = True,
    ) -> None:
        super().__init__()
        check_model_args(depth, widths, block, in_channels, num_classes)
        neuron = {**DEFAULT_NEURON, **(neuron or {})}
        MLF(**neuron)  # validates the neuron arguments once, with the neuron's own messages
        n = (depth - 2) // 6
        th = neuron["threshold"]
        self.depth, self.widths, self.block = depth, tuple(widths), block
        self.neuron = dict(neuron)
        self.bn0 = TdBatchNorm(in_channels, threshold=th, affine=False) if input_norm else None
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = TdBatchNorm(widths[0], threshold=th)
        self.sn1 = MLF(**neuron)
        stages = []
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(SpikingBasicBlock(in_planes, planes, stride, block, neuron, shortcut_neuron))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"SpikingResNet expects input [T, B, C, H, W], got shape {tuple(x.shape)}")
        if self.bn0 is not None:
            x = self.bn0(x)
        out = tdbn_fire(self.bn1, self.sn1, fold(self.conv1, x))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = fold(self.avg_pool, out).flatten(2)
        logits = fold(self.fc, out)
        # Sum step by step then divide: the release's order of operations, so logits match it exactly.
        total = logits[0].clone()
        for t in range(1, logits.shape[0]):
            total += logits[t]
        return total / logits.shape[0]


def _is_int(v: Any, low: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= low


def check_model_args(depth: Any, widths: Any, block: Any, in_channels: Any = 1, num_classes: Any = 2) -> None:
    """Raise :class:`~mlfsnn.nn._args.ArgError` (a ``ValueError``) naming the first invalid argument."""
    if not _is_int(depth, 8) or (depth - 2) % 6:
        shown = ", ".join(map(str, valid_depths(110)))
        raise ArgError("depth", depth, f"6n+2 with n >= 1 ({shown}, ...)")
    ws = list(widths) if isinstance(widths, (list, tuple)) else None
    if ws is None or len(ws) != 3 or not all(_is_int(w, 1) for w in ws):
        raise ArgError("widths", widths, "three positive integers, e.g. [64, 128, 256]")
    if not _is_int(in_channels, 1):
        raise ArgError("in_channels", in_channels, "an integer >= 1")
    if not _is_int(num_classes, 2):
        raise ArgError("num_classes", num_classes, "an integer >= 2")
    if block not in BLOCKS:
        raise ArgError("block", block, f"one of {', '.join(BLOCKS)}")


def spiking_resnet(
    depth: int = 20,
    widths: tuple[int, int, int] = (64, 128, 256),
    in_channels: int = 3,
    num_classes: int = 10,
    block: str = "ds",
    neuron: Mapping[str, Any] | None = None,
    input_norm: bool = False,
    shortcut_neuron: bool = True,
) -> SpikingResNet:
    """Build a spiking (DS-)ResNet; ``neuron`` holds :class:`~mlfsnn.MLF` keyword arguments."""
    return SpikingResNet(
        depth, tuple(widths), in_channels, num_classes, block, neuron, input_norm, shortcut_neuron
    )


# The three networks of the paper (docs/method.md §4) with their exact trainable parameter counts.
PAPER_NETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(depth=20, widths=(64, 128, 256), in_channels=3, num_classes=10),
    "dvs_gesture": dict(depth=20, widths=(16, 32, 64), in_channels=2, num_classes=11, input_norm=True),
    "cifar10_dvs": dict(depth=14, widths=(32, 64, 128), in_channels=2, num_classes=10),
}
PAPER_PARAMS = {"cifar10": 4_327_754, "dvs_gesture": 272_395, "cifar10_dvs": 696_330}


def create_model(name: str, **overrides: Any) -> SpikingResNet:
    """A paper network by name (``cifar10``, ``dvs_gesture``, ``cifar10_dvs``), keywords override."""
    if name not in PAPER_NETS:
        raise ValueError(f"model name must be one of {', '.join(PAPER_NETS)}, got {name!r}")
    return spiking_resnet(**{**PAPER_NETS[name], **overrides})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unit_values(widths: tuple[int, int, int], depth: int, size: int) -> list[int]:
    """Values per sample and step of every conv -> tdBN -> MLF unit's output (stem, then the blocks'
    two each; the downsampling shortcuts aside), for ``size`` x ``size`` inputs."""
    n = (depth - 2) // 6
    out = [widths[0] * size * size]  # stem
    for stage, width in enumerate(widths):
        side = -(-size // 2**stage)
        out += [width * side * side] * (2 * n)
    return out


def training_activation_bytes(
    time_steps: int,
    batch: int,
    widths: tuple[int, int, int],
    depth: int,
    size: int,
    bytes_per_value: int = 4,
    levels: int = 1,
) -> int:
    """An estimate of the activations one training step keeps for backward, in bytes.

    Every conv -> tdBN -> MLF unit keeps about three tensors of its output's size (the convolution's
    output for tdBN, tdBN's output for the neuron, the spikes for the next convolution), for every
    time step and sample. A neuron with K ``levels`` also has K potentials per neuron and step: its
    backward recomputes them for one layer at a time (all at once on the PyTorch path, tile by tile
    in the fused kernels, which do K times one level's work), so the largest layer's are counted.
    Used to refuse sizes that cannot fit before anything is built; gradients and workspace come on top.
    """
    units = unit_values(widths, depth, size)
    per_sample = 3 * sum(units) + levels * max(units)
    return per_sample * time_steps * batch * bytes_per_value
