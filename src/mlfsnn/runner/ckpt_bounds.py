"""The shape a loaded checkpoint may have before anything walks it (checksum, checks, OmegaConf).

``torch.load(weights_only=True)`` runs no code, but what it returns is a tree the file describes
freely: pickle memoizes shared objects, so 40 levels of ``l = [l, l]`` in 2 KB unfold into 2^40
leaves for any walk that follows the tree, and thousands of nested lists overflow every recursive
walk with a ``RecursionError``. :func:`check_bounds` walks the tree once, iteratively, counting a
shared object every time it is reached (as every later walk would), and stops at the first bound.

An mlfsnn checkpoint is far inside the bounds: a 3-epoch digits run holds about 1,400 values and
nests 5 deep; ``history`` adds about 80 values per epoch, so even a 1,000-epoch run of a deep net
stays near 100,000. The depth bound is set by what OmegaConf can take of the stored config (it
recurses about 12 frames per level and fails near 80 levels with Python's default limit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["MAX_CONFIG_VALUES", "MAX_DEPTH", "MAX_VALUES", "check_bounds"]

MAX_VALUES = 2_000_000  # about 1 s to walk; more than 10x the largest real checkpoint
MAX_CONFIG_VALUES = 100_000  # OmegaConf builds ~50,000 nodes a second; real configs hold ~150 values
MAX_DEPTH = 32
# What the weights-only unpickler can build that holds other values; its ints are short (it refuses
# LONG4, so none passes 255 bytes) and its strings and tensors are leaves every walk takes at once.
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _first_excess(root: Any, max_values: int, max_depth: int) -> str | None:
    """What ``root`` exceeds first, as a phrase; ``None`` when it is inside every bound."""
    stack: list[tuple[Any, int]] = [(root, 0)] if isinstance(root, _CONTAINERS) else []
    visited = 1
    while stack:
        value, depth = stack.pop()
        if depth >= max_depth:
            return f"nests deeper than {max_depth} levels"
        size = 2 * len(value) if isinstance(value, dict) else len(value)
        # Counted before they are looked at: a list of a billion references is refused, not copied.
        visited += size
        if visited > max_values:
            return f"holds more than {max_values:,} values"
        children = (*value.keys(), *value.values()) if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, _CONTAINERS))
    return None


def check_bounds(state: Any, path: Path) -> None:
    """Refuse, as a one-line :class:`CheckpointError`, a loaded tree no mlfsnn checkpoint could be."""
    subject, problem = "it", _first_excess(state, MAX_VALUES, MAX_DEPTH)
    if problem is None and isinstance(state, dict) and "config" in state:
        subject, problem = "its config", _first_excess(state["config"], MAX_CONFIG_VALUES, MAX_DEPTH)
    if problem is not None:
        raise CheckpointError(
            f"checkpoint {path} is not an mlfsnn checkpoint: {subject} {problem}; use another checkpoint"
        )
