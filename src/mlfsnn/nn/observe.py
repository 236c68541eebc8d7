"""Observe every MLF layer of a model: firing rate and dormant-unit ratio.

    with NeuronMonitor(model) as monitor:
        model(x)
    monitor.firing_rate()    # {"sn1": 0.21, "layer1.0.sn1": 0.17, ...}
    monitor.dormant_ratio()  # {"sn1": 0.40, ...}

When no monitor is attached a neuron runs without hooks (torch's fast path). While attached, the
dormant statistic recomputes the layer's potentials without gradient (one extra forward of the
neuron alone), so attach monitors for evaluation, not for every training step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .neurons import MLF, mlf_dormant_mask

__all__ = ["LayerStats", "NeuronMonitor", "SynapticOps", "add_grad_norms"]


@dataclass
class LayerStats:
    """Running sums for one neuron layer; tensors stay on the device until read."""

    spikes: Tensor | float = 0.0  # sum of spike counts
    neuron_steps: int = 0  # neurons x samples x time steps seen
    dormant: Tensor | float = 0.0  # dormant (sample, neuron) units
    units: int = 0  # (sample, neuron) units seen
    samples: int = 0
    neurons: int = 0  # neurons per sample (the layer's size)
    time_steps: int = 0
    extra: dict = field(default_factory=dict)


class NeuronMonitor:
    """Attach to every :class:`~mlfsnn.MLF` in ``model``; use as a context manager.

    Args:
        model: any module containing MLF layers.
        dormant: also measure the dormant-unit ratio (costs a no-grad recomputation per layer).

    Firing rate = spikes per neuron per time step (counts, so up to K for MLF). Dormant ratio = the
    fraction of (sample, neuron) units whose potential never entered any level's surrogate window
    (docs/method.md §8): those units pass no gradient.
    """

    def __init__(self, model: nn.Module, dormant: bool = True) -> None:
        self.dormant = dormant
        self.layers: dict[str, MLF] = {n: m for n, m in model.named_modules() if isinstance(m, MLF)}
        self.stats: dict[str, LayerStats] = {n: LayerStats() for n in self.layers}
        self._names = {id(m): n for n, m in self.layers.items()}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _observe(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        x = args[0]
        st = self.stats[self._names[id(module)]]
        steps, batch = x.shape[0], x.shape[1] if x.dim() > 1 else 1
        neurons = out[0, 0].numel() if x.dim() > 1 else 1
        with torch.no_grad():
            st.spikes = st.spikes + out.detach().float().sum()
            if self.dormant:
                _, mask = mlf_dormant_mask(
                    x.detach(), module.levels, module.threshold, module.width, module.decay
                )
                st.dormant = st.dormant + mask.sum()
        st.neuron_steps += out.numel()
        st.units += batch * neurons
        st.samples += batch
        st.neurons, st.time_steps = neurons, steps

    def attach(self) -> NeuronMonitor:
        """Start observing (a forward hook on every MLF layer); attaching twice is a no-op."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._observe) for m in self.layers.values()]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> NeuronMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def reset(self) -> None:
        self.stats = {n: LayerStats() for n in self.layers}

    def firing_rate(self) -> dict[str, float]:
        """Spikes per neuron per time step, per layer (layers not yet run are left out)."""
        return {n: float(s.spikes) / s.neuron_steps for n, s in self.stats.items() if s.neuron_steps}

    def dormant_ratio(self) -> dict[str, float]:
        """Fraction of dormant (sample, neuron) units, per layer."""
        if not self.dormant:
            raise RuntimeError("this NeuronMonitor was created with dormant=False")
        return {n: float(s.dormant) / s.units for n, s in self.stats.items() if s.units}

    def spikes_per_sample(self) -> dict[str, float]:
        """Total spike count per input sample, per layer (the basis of synaptic-operation counts)."""
        return {n: float(s.spikes) / s.samples for n, s in self.stats.items() if s.samples}


class SynapticOps:
    """Count synaptic operations (SOPs) per sample: every spike times the fan-out it drives.

    A forward pre-hook on each ``Conv2d`` / ``Linear`` whose input is spikes adds
    ``input.sum() * macs_per_item / input_neurons_per_item``: each spike (a count, so an MLF output
    of 2 is two spikes) costs one accumulate per output it reaches, i.e. the layer's mean fan-out.
    Layers fed with real values (the stem convolution, listed in ``exclude``) are counted as MACs.
    ``ann_macs_per_sample`` is the same network run once as an ANN (no time steps).

        with SynapticOps(model) as sops:
            model(x)
        sops.sops_per_sample(), sops.ann_macs_per_sample()
    """

    def __init__(self, model: nn.Module, exclude: tuple[str, ...] = ("conv1",)) -> None:
        self.model = model
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self.exclude = set(exclude)
        self._handles: list = []
        self.reset()

    def reset(self) -> None:
        self.sops: dict[str, Tensor | float] = {n: 0.0 for n in self.layers}
        self.macs: dict[str, int] = {}
        self.samples = 0

    def _count_samples(self, module: nn.Module, args: tuple) -> None:
        self.samples += args[0].shape[1]  # the model sees [T, B, ...]

    def _make_hook(self, name: str, layer: nn.Module):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            x = args[0]  # time folded into batch: [T * B, ...]
            macs = _macs_per_item(layer, output)
            self.macs[name] = macs
            if name not in self.exclude:
                neurons = x[0].numel()
                with torch.no_grad():
                    self.sops[name] = self.sops[name] + x.detach().float().sum() * (macs / neurons)

        return hook

    def __enter__(self) -> SynapticOps:
        self._handles.append(self.model.register_forward_pre_hook(self._count_samples))
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._make_hook(name, layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def per_layer(self) -> dict[str, float]:
        """SOPs per sample for each spike-fed layer."""
        n = max(self.samples, 1)
        return {k: float(v) / n for k, v in self.sops.items() if k not in self.exclude}

    def sops_per_sample(self) -> float:
        return sum(self.per_layer().values())

    def ann_macs_per_sample(self) -> int:
        """MACs of the equivalent ANN for one sample (every layer once, no time steps)."""
        return int(sum(self.macs.values()))


def _macs_per_item(layer: nn.Module, output: Tensor) -> int:
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0] * layer.kernel_size[1]
        return output[0].numel() * (layer.in_channels // layer.groups) * k
    return output[0].numel() * layer.in_features


def add_grad_norms(model: torch.nn.Module, sums: dict[str, float]) -> None:
    """Add this step's gradient L2 norm of every layer (all its parameters together) to ``sums``."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            layer = name.removeprefix("module.").rpartition(".")[0]
            groups.setdefault(layer, []).append(p.grad.detach().float().pow(2).sum())
    norms = torch.stack([torch.stack(g).sum() for g in groups.values()]).sqrt().tolist()  # one sync
    for layer, norm in zip(groups, norms, strict=True):
        sums[layer] = sums.get(layer, 0.0) + norm
