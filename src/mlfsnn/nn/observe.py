"""Observe a model through forward hooks: firing rate and dormant-unit ratio of every MLF layer
(:class:`NeuronMonitor`), synaptic operations and energy (:class:`SynapticOps`), spike rasters and
per-step rates for plots (:class:`SpikeRecorder`).

    with NeuronMonitor(model) as monitor:
        model(x)
    monitor.firing_rate()    # {"sn1": 0.21, "layer1.0.sn1": 0.17, ...}
    monitor.dormant_ratio()  # {"sn1": 0.40, ...}
    monitor.readings()       # with readings=True: four readings of "dormant" (docs/method.md §8)

When no monitor is attached a neuron runs without hooks (torch's fast path). While attached, the
dormant statistic recomputes the layer's potentials without gradient (one extra forward of the
neuron alone), so attach monitors for evaluation, not for every training step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .neurons import MLF, mlf_window_mask

__all__ = [
    "E_AC_PJ",
    "E_MAC_PJ",
    "LayerStats",
    "NeuronMonitor",
    "SpikeRecorder",
    "SynapticOps",
    "add_grad_norms",
]


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
    # with readings=True (NeuronMonitor.readings)
    dormant_steps: Tensor | float = 0.0  # (sample, neuron, step) with no level in its window
    silent: Tensor | float = 0.0  # (sample, neuron) units that never spike
    reached: Tensor | None = None  # [neurons]: some sample's potential entered a window


class NeuronMonitor:
    """Attach to every :class:`~mlfsnn.MLF` in ``model``; use as a context manager.

    Args:
        model: any module containing MLF layers.
        dormant: also measure the dormant-unit ratio (costs a no-grad recomputation per layer).
        readings: also keep what :meth:`readings` needs (implies ``dormant``).

    Firing rate = spikes per neuron per time step (counts, so up to K for MLF). Dormant ratio = the
    fraction of (sample, neuron) units whose potential never entered any level's surrogate window
    (docs/method.md §8): those units pass no gradient.
    """

    def __init__(self, model: nn.Module, dormant: bool = True, readings: bool = False) -> None:
        self.dormant = dormant or readings
        self.keep_readings = readings
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
                _, in_window = mlf_window_mask(
                    x.detach(), module.levels, module.threshold, module.width, module.decay
                )
                reached = in_window.any(dim=0).reshape(batch, -1)  # [B, neurons]: not dormant
                st.dormant = st.dormant + reached.numel() - reached.sum()
                if self.keep_readings:
                    st.dormant_steps = st.dormant_steps + in_window.numel() - in_window.sum()
                    st.silent = st.silent + (out.detach().reshape(steps, batch, -1).sum(0) == 0).sum()
                    ever = reached.any(dim=0)
                    st.reached = ever if st.reached is None else st.reached | ever
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

    def readings(self) -> dict[str, dict[str, float]]:
        """Four readings of "dormant" per layer (docs/method.md §8), each a fraction:

        * ``unit``: (sample, neuron) units no level's potential reached a window at any step
          (:meth:`dormant_ratio`, the definition this project uses);
        * ``step``: (sample, neuron, step) triples with no level in its window at that step;
        * ``silent``: (sample, neuron) units that never spike;
        * ``dead``: neurons that are dormant (``unit``) for every sample seen.
        """
        if not self.keep_readings:
            raise RuntimeError("this NeuronMonitor was created with readings=False")
        seen = {n: s for n, s in self.stats.items() if s.units}
        return {
            "unit": self.dormant_ratio(),
            "step": {n: float(s.dormant_steps) / s.neuron_steps for n, s in seen.items()},
            "silent": {n: float(s.silent) / s.units for n, s in seen.items()},
            "dead": {
                n: float((~s.reached).sum()) / s.reached.numel()
                for n, s in seen.items()
                if s.reached is not None
            },
        }

    def spikes_per_sample(self) -> dict[str, float]:
        """Total spike count per input sample, per layer (the basis of synaptic-operation counts)."""
        return {n: float(s.spikes) / s.samples for n, s in self.stats.items() if s.samples}


class SpikeRecorder:
    """Record every MLF layer's spike counts for plots: one sample's raster and every sample's rate.

        with SpikeRecorder(model) as rec:
            model(x)
        rec.rasters   # {"sn1": [T, neurons] counts 0..K of sample ``sample`` of the first batch}
        rec.rates()   # {"sn1": [T] spikes per neuron per step, over every sample seen}
        rec.levels    # {"sn1": 3, ...}: K of each layer

    Tensors come back on the CPU; drawing them is :mod:`mlfsnn.report.spikes`' job (no matplotlib here).
    """

    def __init__(self, model: nn.Module, sample: int = 0) -> None:
        self.layers: dict[str, MLF] = {n: m for n, m in model.named_modules() if isinstance(m, MLF)}
        self.levels = {n: m.levels for n, m in self.layers.items()}
        self.sample = sample
        self.rasters: dict[str, Tensor] = {}
        self._sums: dict[str, Tensor] = {}  # spikes per time step, summed over samples and neurons
        self._units: dict[str, int] = {}  # neurons x samples seen
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            out = out.detach()  # [T, B, ...]
            if name not in self.rasters:
                self.rasters[name] = out[:, self.sample].reshape(out.shape[0], -1).float().cpu()
            sums = out.sum(dim=tuple(range(1, out.dim())), dtype=torch.float64)
            self._sums[name] = self._sums[name] + sums if name in self._sums else sums
            self._units[name] = self._units.get(name, 0) + out[0].numel()

        return hook

    def __enter__(self) -> SpikeRecorder:
        self._handles = [m.register_forward_hook(self._make_hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def rates(self) -> dict[str, Tensor]:
        """Spikes per neuron per time step, per layer: a ``[T]`` tensor over every sample seen."""
        return {n: (s / self._units[n]).float().cpu() for n, s in self._sums.items()}


# Energy per operation at 45 nm CMOS, 32-bit float (Horowitz, ISSCC 2014): an add 0.9 pJ, a multiply
# 3.7 pJ, so a multiply-accumulate 4.6 pJ. The runner reads its values from the config (energy.*).
E_AC_PJ = 0.9
E_MAC_PJ = 4.6


class SynapticOps:
    """Count synaptic operations (SOPs) and MACs per sample, and the energy they cost (docs/method.md §10).

    A forward hook on each ``Conv2d`` / ``Linear`` whose input is spikes adds, per input item, the
    spikes times the layer's mean fan-out (``macs_per_item / input_neurons``), two ways:

    * per level (:meth:`sops_per_sample`): an MLF count of 3 is three spikes, three accumulates;
    * per event (:meth:`event_sops_per_sample`): a non-zero input is one event, one accumulate per
      fan-out whatever its count (the count travels with the event).

    Layers fed with real values (listed in ``exclude``: the stem convolution reads the input, the
    classifier reads average-pooled spike counts) cost their MACs every time they run, i.e. on every
    time step (:meth:`real_macs_per_sample`). ``ann_macs_per_sample`` is the same network run once
    as an ANN (every layer once, no time steps).

        with SynapticOps(model) as sops:
            model(x)
        sops.sops_per_sample(), sops.ann_macs_per_sample(), sops.energy_metrics()
    """

    def __init__(self, model: nn.Module, exclude: tuple[str, ...] = ("conv1", "fc")) -> None:
        self.model = model
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self.exclude = set(exclude)
        self._handles: list = []
        self.reset()

    def reset(self) -> None:
        # Sums over every sample seen; tensors stay on the device until read (one sync at the end).
        self.sops: dict[str, Tensor | float] = {n: 0.0 for n in self.layers}  # per level spike
        self.events: dict[str, Tensor | float] = {n: 0.0 for n in self.layers}  # per event
        self.real_macs: dict[str, float] = {n: 0.0 for n in self.layers}  # real-valued layers, as run
        self.macs: dict[str, int] = {}  # MACs per item (one time step of one sample)
        self.samples = 0

    def _count_samples(self, module: nn.Module, args: tuple) -> None:
        self.samples += args[0].shape[1]  # the model sees [T, B, ...]

    def _make_hook(self, name: str, layer: nn.Module):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            x = args[0]
            macs, inputs, items = _layer_shape(layer, x, output)
            self.macs[name] = macs
            if name in self.exclude:
                self.real_macs[name] += macs * items
                return
            fan_out = macs / inputs
            with torch.no_grad():
                x = x.detach()
                # float64: a layer's spike total exceeds float32's exact integers on big batches
                self.sops[name] = self.sops[name] + x.sum(dtype=torch.float64) * fan_out
                self.events[name] = self.events[name] + torch.count_nonzero(x).double() * fan_out

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

    def _per_sample(self, sums: dict[str, Tensor | float]) -> dict[str, float]:
        n = max(self.samples, 1)
        return {k: float(v) / n for k, v in sums.items() if k not in self.exclude}

    def per_layer(self) -> dict[str, float]:
        """SOPs per sample for each spike-fed layer, counted per level spike."""
        return self._per_sample(self.sops)

    def per_layer_events(self) -> dict[str, float]:
        """SOPs per sample for each spike-fed layer, counted per event (non-zero count)."""
        return self._per_sample(self.events)

    def sops_per_sample(self) -> float:
        return sum(self.per_layer().values())

    def event_sops_per_sample(self) -> float:
        return sum(self.per_layer_events().values())

    def real_macs_per_sample(self) -> float:
        """MACs of the real-valued layers per sample, as run: once per time step."""
        return sum(v for k, v in self.real_macs.items() if k in self.exclude) / max(self.samples, 1)

    def ann_macs_per_sample(self) -> int:
        """MACs of the equivalent ANN for one sample (every layer once, no time steps)."""
        return int(sum(self.macs.values()))

    def energy_metrics(self, e_ac_pj: float = E_AC_PJ, e_mac_pj: float = E_MAC_PJ) -> dict[str, float | None]:
        """Operation counts and energy per sample in pJ, both conventions; ``energy_ratio`` (ANN / SNN)
        uses the per-level count, the conservative one (``energy_ratio_event`` the other)."""
        sops, events, macs = self.sops_per_sample(), self.event_sops_per_sample(), self.real_macs_per_sample()
        ann = self.ann_macs_per_sample() * e_mac_pj
        snn = sops * e_ac_pj + macs * e_mac_pj
        snn_event = events * e_ac_pj + macs * e_mac_pj
        return {
            "sops_per_sample": sops,
            "sops_per_event_sample": events,
            "snn_macs_per_sample": macs,
            "ann_macs_per_sample": self.ann_macs_per_sample(),
            "energy_pj_per_sample": snn,
            "energy_event_pj_per_sample": snn_event,
            "ann_energy_pj_per_sample": ann,
            "energy_ratio": ann / snn if snn > 0 else None,
            "energy_ratio_event": ann / snn_event if snn_event > 0 else None,
        }


def _layer_shape(layer: nn.Module, x: Tensor, output: Tensor) -> tuple[int, int, int]:
    """``(MACs per item, input neurons per item, items)``: an item is one sample at one time step.

    Convolutions see time folded into batch (``[T * B, C, H, W]``); a linear layer may see any
    leading shape (``[T * B, F]`` or ``[T, B, F]``).
    """
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0] * layer.kernel_size[1]
        batched = x.dim() == 4
        out_item = output[0].numel() if batched else output.numel()
        items = x.shape[0] if batched else 1
        return (
            out_item * (layer.in_channels // layer.groups) * k,
            x[0].numel() if batched else x.numel(),
            items,
        )
    return layer.out_features * layer.in_features, layer.in_features, x.numel() // layer.in_features


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
