"""The library: MLF neurons, tdBN, spiking (DS-)ResNets, observers, the release converter and NIR.

Imports torch and :mod:`mlfsnn.kernels` only, never the runner's dependencies (hydra, wandb, tonic,
matplotlib), so it can be used from a notebook or another training loop.
"""

from .neurons import MLF, mlf, mlf_reference
from .nir import from_nir, to_nir
from .observe import NeuronMonitor, SynapticOps
from .release import convert_release_state_dict
from .resnet import PAPER_NETS, SpikingResNet, count_parameters, create_model, spiking_resnet
from .tdbn import TdBatchNorm

__all__ = [
    "MLF",
    "PAPER_NETS",
    "NeuronMonitor",
    "SpikingResNet",
    "SynapticOps",
    "TdBatchNorm",
    "convert_release_state_dict",
    "count_parameters",
    "create_model",
    "from_nir",
    "mlf",
    "mlf_reference",
    "spiking_resnet",
    "to_nir",
]
