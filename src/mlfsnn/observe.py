"""Observe every MLF layer of a model: firing rate and dormant-unit ratio.

    with NeuronMonitor(model) as monitor:
        model(x)
    monitor.firing_rate()    # {"sn1": 0.21, "layer1.0.sn1": 0.17, ...}
    monitor.dormant_ratio()  # {"sn1": 0.40, ...}

When no monitor is attached a neuron pays one empty-list check per call. While attached, the
dormant statistic recomputes the layer's potentials without gradient (one extra forward of the
neuron alone), so attach monitors for evaluation, not for every training step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .neurons import MLF, mlf_dormant_mask

__all__ = ["LayerStats", "NeuronMonitor"]


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
    (paper-notes §8): those units pass no gradient.
    """

    def __init__(self, model: nn.Module, dormant: bool = True) -> None:
        self.dormant = dormant
        self.layers: dict[str, MLF] = {n: m for n, m in model.named_modules() if isinstance(m, MLF)}
        self.stats: dict[str, LayerStats] = {n: LayerStats() for n in self.layers}
        self._names = {id(m): n for n, m in self.layers.items()}
        self._attached = False

    def _observe(self, module: MLF, x: Tensor, out: Tensor) -> None:
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
        if not self._attached:
            for m in self.layers.values():
                m._observers.append(self._observe)
            self._attached = True
        return self

    def detach(self) -> None:
        if self._attached:
            for m in self.layers.values():
                m._observers.remove(self._observe)
            self._attached = False

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
