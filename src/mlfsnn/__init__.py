"""mlfsnn: multi-level firing spiking neurons, tdBN and spiking DS-ResNet (IJCAI 2022).

Tensors are time first, ``[T, B, ...]``.
"""

from .neurons import MLF, mlf, mlf_reference
from .observe import NeuronMonitor, SynapticOps
from .release import convert_release_state_dict
from .resnet import PAPER_NETS, SpikingResNet, count_parameters, create_model, spiking_resnet
from .tdbn import TdBatchNorm

__version__ = "0.1.0"

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
    "mlf",
    "mlf_reference",
    "spiking_resnet",
]
