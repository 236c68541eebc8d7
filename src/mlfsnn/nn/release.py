"""Load checkpoints of the authors' release (langfengQ/MLF-DSResNet) into :func:`spiking_resnet`.

The release names its layers differently: blocks sit under ``layerN.execute.i``, every tdBN wraps a
``BatchNorm2d`` as ``.bn``, the classifier is ``voting`` and DataParallel adds ``module.``. The
tensors themselves are the same, so a converted state dict gives the same outputs.

    sd = torch.load("result_gesture.pth", weights_only=True)   # {"model": state_dict, "epoch": n}
    model = mlfsnn.create_model("dvs_gesture")
    model.load_state_dict(convert_release_state_dict(sd))
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

__all__ = ["convert_release_state_dict"]

_RULES = [
    (re.compile(r"^module\."), ""),
    (re.compile(r"\.execute\."), "."),
    (re.compile(r"\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)$"), r".\1"),
    (re.compile(r"^voting\."), "fc."),
]


def convert_release_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the release's keys to mlfsnn's (unknown keys pass through, so a load reports them)."""
    for wrapper in ("model", "state_dict"):  # the release saves {"model": state_dict, "epoch": n}
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    out = {}
    for key, value in state.items():
        for pattern, repl in _RULES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out
