"""This process's place in a torchrun job, read from the environment (no torch import: the CLI and
the Hydra preflight ask before torch loads)."""

from __future__ import annotations

import os

__all__ = ["env_rank", "env_world_size"]


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))
