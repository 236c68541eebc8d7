"""mlfsnn: multi-level firing spiking neurons, tdBN and spiking DS-ResNet (IJCAI 2022).

Tensors are time first, ``[T, B, ...]``. The library lives in :mod:`mlfsnn.nn` (with the fused
kernels in :mod:`mlfsnn.kernels`); the experiment runner (:mod:`mlfsnn.runner`, :mod:`mlfsnn.data`,
:mod:`mlfsnn.report`, :mod:`mlfsnn.cli`) is built on it and imported only when used; so is the
library itself (``mlfsnn.MLF`` imports torch when first named).
"""

from typing import TYPE_CHECKING

from .errors import CheckpointError, ConfigError, DataError, ReportError, UserError

if TYPE_CHECKING:
    from .nn import (
        MLF,
        PAPER_NETS,
        NeuronMonitor,
        SpikingResNet,
        SynapticOps,
        TdBatchNorm,
        convert_release_state_dict,
        count_parameters,
        create_model,
        from_nir,
        mlf,
        mlf_reference,
        spiking_resnet,
        to_nir,
    )

__version__ = "0.1.0"

__all__ = [
    "MLF",
    "PAPER_NETS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NeuronMonitor",
    "ReportError",
    "SpikingResNet",
    "SynapticOps",
    "TdBatchNorm",
    "UserError",
    "convert_release_state_dict",
    "count_parameters",
    "create_model",
    "from_nir",
    "mlf",
    "mlf_reference",
    "spiking_resnet",
    "to_nir",
]
_ERRORS = {"CheckpointError", "ConfigError", "DataError", "ReportError", "UserError"}


def __getattr__(name: str) -> object:
    # The library's names load torch on first use, not on `import mlfsnn`: the console scripts set
    # OpenMP's defaults (mlfsnn.cli) before torch loads, and their --help answers without it.
    if name in __all__ and name not in _ERRORS:
        from . import nn

        return getattr(nn, name)
    raise AttributeError(f"module 'mlfsnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
