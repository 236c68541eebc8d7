"""Checkpoints named the release's way load into mlfsnn's models and give the same outputs."""

from __future__ import annotations

import re

import torch

import mlfsnn
from mlfsnn.nn.release import convert_release_state_dict


def to_release_names(key: str) -> str:
    """mlfsnn -> release naming, written independently of the converter (docs/method.md §3-4 layout)."""
    key = re.sub(r"^(layer\d)\.(\d+)\.", r"\1.execute.\2.", key)
    key = re.sub(
        r"\b(bn\d|shortcut\.1)\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r"\1.bn.\2", key
    )
    return "module." + re.sub(r"^fc\.", "voting.", key)


def test_release_keys_map_onto_the_paper_nets() -> None:
    for name in ("cifar10", "dvs_gesture", "cifar10_dvs"):
        model = mlfsnn.create_model(name)
        ours = model.state_dict()
        release = {to_release_names(k): v for k, v in ours.items()}
        assert "module.layer2.execute.0.shortcut.1.bn.running_var" in release
        assert "module.voting.weight" in release
        converted = convert_release_state_dict(release)
        assert set(converted) == set(ours)
        if name == "dvs_gesture":
            assert "bn0.running_mean" in converted and "bn0.weight" not in converted


def test_converted_weights_reproduce_the_outputs() -> None:
    src = mlfsnn.spiking_resnet(depth=8, widths=(4, 8, 8), in_channels=2, num_classes=11, input_norm=True)
    x = torch.rand(3, 2, 2, 8, 8) * 4
    src.train()
    src(x)  # move the running statistics away from their initial values
    src.eval()
    release = {to_release_names(k): v.clone() for k, v in src.state_dict().items()}
    dst = mlfsnn.spiking_resnet(depth=8, widths=(4, 8, 8), in_channels=2, num_classes=11, input_norm=True)
    # The release's train scripts save {"model": state_dict, "epoch": n}.
    dst.load_state_dict(convert_release_state_dict({"model": release, "epoch": 5}))
    dst.eval()
    assert torch.equal(dst(x), src(x))
