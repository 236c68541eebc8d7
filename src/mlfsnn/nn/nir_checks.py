"""What :func:`~mlfsnn.nn.from_nir` checks in a NIR graph before it builds anything.

A NIR file comes from anywhere (another simulator, a hand-written script, a damaged copy), so every
value the import divides by, indexes with or names a module after is checked first, and a bad one is
one line naming the node, the field, the value and what is allowed (:class:`NIRGraphError`, a
:class:`~mlfsnn.errors.ConfigError`, so console scripts print it without a traceback).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["NIRGraphError", "check_dt", "check_edges", "check_names", "finite_array", "uniform"]


class NIRGraphError(ConfigError):
    """A NIR graph (or the ``dt`` given with it) that :func:`~mlfsnn.nn.from_nir` cannot run."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_dt(dt: Any, source: str = "dt") -> float:
    """``dt`` as a float: a finite number > 0 (not a string, not a bool); ``source`` names it."""
    if isinstance(dt, np.ndarray) and dt.ndim == 0:
        dt = dt.item()
    if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not 0 < float(dt) < math.inf:
        raise NIRGraphError(f"{source}={_shown(dt)} is invalid: expected a finite number > 0 (seconds)")
    return float(dt)


def check_names(names: Iterable[Any]) -> None:
    """Node names must be non-empty strings: they become module names and edge ends."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise NIRGraphError(f"NIR node name {_shown(name)} is invalid: expected a non-empty string")


def check_edges(edges: Any, nodes: dict[str, Any]) -> list[tuple[str, str]]:
    """The edges as ``(source, target)`` pairs of existing nodes, in their order."""
    try:
        pairs = list(edges)
    except TypeError:
        raise NIRGraphError(
            f"NIR graph edges {_shown(edges)} are invalid: expected a list of pairs"
        ) from None
    out = []
    for edge in pairs:
        if isinstance(edge, (str, bytes)) or not isinstance(edge, Iterable) or len(pair := tuple(edge)) != 2:
            raise NIRGraphError(f"NIR edge {_shown(edge)} is invalid: expected a (source, target) pair")
        for end in pair:
            if not isinstance(end, str) or end not in nodes:
                raise NIRGraphError(f"NIR edge {_shown(edge)} names {_shown(end)}, which is not a node")
        out.append((pair[0], pair[1]))
    return out


def finite_array(node: str, field: str, value: Any) -> np.ndarray:
    """``value`` as a float64 array with at least one element, all finite."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise NIRGraphError(
            f"NIR node {node!r}: {field}={_shown(value)} is invalid: expected numbers"
        ) from None
    if a.size == 0 or not np.isfinite(a).all():
        bad = "empty" if a.size == 0 else f"holds {a[~np.isfinite(a)].flat[0]}"
        raise NIRGraphError(f"NIR node {node!r}: {field} is invalid ({bad}): expected finite numbers")
    return a


def uniform(node: str, field: str, value: Any, positive: bool = False) -> float:
    """The one value every neuron of ``node`` has for ``field`` (finite; > 0 with ``positive``)."""
    a = finite_array(node, field, value)
    if a.min() != a.max():
        raise NIRGraphError(f"NIR node {node!r}: per-neuron {field} values are not supported")
    v = float(a.flat[0])
    if positive and not v > 0:
        raise NIRGraphError(f"NIR node {node!r}: {field}={v} is invalid: expected a finite number > 0")
    return v
