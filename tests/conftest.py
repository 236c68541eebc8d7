"""Generic fixtures shared by the whole test suite."""

from __future__ import annotations

import pytest
import torch

# The tests use tiny tensors: intra-op threading only adds synchronisation cost (a 3x3 conv on a
# 12x8x4x4 input takes ~25 ms with 2 threads on a loaded 2-core machine, ~0.1 ms with one).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same global RNG state, so random inputs are reproducible."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    """wandb never runs in tests: the configs read the mode from WANDB_MODE."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
