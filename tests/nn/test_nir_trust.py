"""from_nir on graphs from anywhere: linear in the graph's size, every bad value one line (issue 18).

The error is :class:`~mlfsnn.nn.nir_checks.NIRGraphError`, a ``ValueError`` and a
:class:`~mlfsnn.errors.ConfigError`, which every console script prints as ``error: ...`` (exit 2).
"""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mlfsnn import from_nir
from mlfsnn.cli.export import main as export_main
from mlfsnn.errors import ConfigError
from mlfsnn.nn.nir_checks import NIRGraphError
from mlfsnn.nn.nir_import import META, _order, _Unit

nir = pytest.importorskip("nir")
BIN = Path(sys.executable).parent
SHAPE = (2,)


def _graph(nodes: dict[str, Any], edges: list, metadata: dict | None = None) -> Any:
    # type_check=False: nir's own type inference is quadratic in nodes (not what is tested here)
    return nir.NIRGraph(nodes, edges, metadata=metadata or {}, type_check=False)


def _lif(**kw: Any) -> Any:
    base = dict(tau=np.ones(SHAPE), r=np.ones(SHAPE), v_leak=np.zeros(SHAPE), v_threshold=np.ones(SHAPE))
    return nir.LIF(**{**base, **kw})


def _with(node: Any, **attrs: Any) -> Any:
    """``node`` with attributes nir's constructor would refuse (as a damaged file can hold)."""
    for k, v in attrs.items():
        setattr(node, k, v)
    return node


def _one_neuron(neuron: Any, name: str = "n", metadata: dict | None = None) -> Any:
    nodes = {"in": nir.Input(np.array(SHAPE)), name: neuron, "out": nir.Output(np.array(SHAPE))}
    return _graph(nodes, [("in", name), (name, "out")], metadata)


# --- 4. linear import, same order ------------------------------------------------------------------


def test_ten_thousand_node_chain_imports_in_seconds_in_topological_order() -> None:
    n = 10_000
    names = [f"s{i}" for i in range(n)]
    edges = [("in", names[0]), *itertools.pairwise(names), (names[-1], "out")]
    # Listed last to first: an order that only a real topological sort gets right.
    nodes = {"out": nir.Output(np.array(SHAPE))}
    nodes |= {
        s: nir.Scale(np.full(SHAPE, 1.0 + (i == 0), np.float32)) for i, s in reversed(list(enumerate(names)))
    }
    nodes["in"] = nir.Input(np.array(SHAPE))
    t0 = time.perf_counter()
    net = from_nir(_graph(nodes, edges), dt=1e-3)
    assert time.perf_counter() - t0 < 10, "from_nir must be linear (it took 32 s when quadratic)"
    plan = [u.name for u in net._plan]
    assert plan == ["in", *names, "out"]
    torch.testing.assert_close(net(torch.ones(3, 1, *SHAPE)), torch.full((1, *SHAPE), 2.0))


def _rounds(units: dict[str, _Unit]) -> list[str]:
    """The order of the quadratic version: repeatedly every unit whose sources are all placed."""
    done: set[str] = set()
    plan: list[str] = []
    pending = list(units.values())
    while pending:
        ready = [u for u in pending if all(s in done for s in u.sources)]
        done |= {u.name for u in ready}
        plan += [u.name for u in ready]
        pending = [u for u in pending if u.name not in done]
    return plan


def test_order_is_the_same_as_before_on_random_graphs() -> None:
    rng = random.Random(0)
    for _ in range(300):
        topo = [f"u{i}" for i in range(rng.randint(1, 30))]
        listed = rng.sample(topo, len(topo))  # insertion order differs from any topological order
        units = {}
        for name in listed:
            before = topo[: topo.index(name)]
            units[name] = _Unit(name, "stateless", rng.sample(before, min(len(before), rng.randint(0, 3))))
        assert [u.name for u in _order(units)] == _rounds(units)


def test_cycles_are_named() -> None:
    units = {"a": _Unit("a", "input", []), "b": _Unit("b", "s", ["a", "c"]), "c": _Unit("c", "s", ["b"])}
    with pytest.raises(NIRGraphError, match=r"cycle through \['b', 'c'\]"):
        _order(units)


def test_claimed_levels_in_metadata_do_not_build_a_ladder() -> None:
    # Metadata that matches the arrays exactly (so from_nir trusts it) but claims 10^12 levels.
    dt, decay, th = 1e-4, 0.25, 0.6
    tau = dt / (1 - decay)
    meta = {META["group"]: "g", META["level"]: 0, META["levels"]: 10**12, META["threshold"]: th}
    meta |= {META["width"]: 1.0, META["decay"]: decay}
    full = lambda v: np.full(SHAPE, v, np.float32)  # noqa: E731
    lif = nir.LIF(
        tau=full(tau),
        r=full(tau / dt),
        v_leak=full(0.0),
        v_threshold=full(th),
        v_reset=full(0.0),
        metadata=meta,
    )
    t0 = time.perf_counter()
    net = from_nir(_one_neuron(lif), dt=dt)
    assert time.perf_counter() - t0 < 10 and net(torch.ones(2, 1, *SHAPE)).shape == (1, *SHAPE)


# --- 5. every bad value is one line naming node and field -----------------------------------------


BAD_GRAPHS = {
    "tau=0": (lambda: _one_neuron(_lif(tau=np.zeros(SHAPE))), ["'n'", "tau=0.0", "> 0"]),
    "tau<0": (lambda: _one_neuron(_lif(tau=np.full(SHAPE, -1.0))), ["'n'", "tau=-1.0", "> 0"]),
    "tau=nan": (lambda: _one_neuron(_lif(tau=np.full(SHAPE, np.nan))), ["'n'", "tau", "finite"]),
    "tau=inf": (lambda: _one_neuron(_lif(tau=np.full(SHAPE, np.inf))), ["'n'", "tau", "finite"]),
    "tau<dt": (lambda: _one_neuron(_lif(tau=np.full(SHAPE, 1e-6))), ["'n'", "tau >= dt"]),
    "r=nan": (lambda: _one_neuron(_lif(r=np.full(SHAPE, np.nan))), ["'n'", "r", "finite"]),
    "threshold=inf": (
        lambda: _one_neuron(_lif(v_threshold=np.full(SHAPE, np.inf))),
        ["v_threshold", "finite"],
    ),
    "empty tau": (lambda: _one_neuron(_with(_lif(), tau=np.zeros(0))), ["'n'", "tau", "empty"]),
    "empty name": (lambda: _one_neuron(_lif(), name=""), ["node name ''", "non-empty string"]),
    "blank name": (lambda: _one_neuron(_lif(), name="  "), ["node name '  '", "non-empty string"]),
    "unknown edge end": (
        lambda: _graph(
            {"in": nir.Input(np.array(SHAPE)), "out": nir.Output(np.array(SHAPE))}, [("in", "zz")]
        ),
        ["'zz'", "not a node"],
    ),
    "edge of three": (
        lambda: _graph(
            {"in": nir.Input(np.array(SHAPE)), "out": nir.Output(np.array(SHAPE))}, [("in", "out", "x")]
        ),
        ["(source, target) pair"],
    ),
    "2-D conv weight": (
        lambda: _graph(
            {
                "in": nir.Input(np.array((1, 2, 2))),
                "c": nir.Conv2d(None, np.ones((2, 2), np.float32), 1, 0, 1, 1, np.zeros(2)),
                "out": nir.Output(np.array((2,))),
            },
            [("in", "c"), ("c", "out")],
        ),
        ["'c' (Conv2d)", "2-D weight"],
    ),
    "no input": (lambda: _graph({"out": nir.Output(np.array(SHAPE))}, []), ["one Input and one Output"]),
    "metadata dt": (lambda: _one_neuron(_lif(), metadata={"dt": "abc"}), ["metadata", "dt='abc'", "> 0"]),
    "metadata dt=0": (lambda: _one_neuron(_lif(), metadata={"dt": 0.0}), ["metadata", "dt=0.0", "> 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_bad_graphs_are_one_line(case: str) -> None:
    make, needles = BAD_GRAPHS[case]
    with pytest.raises(NIRGraphError) as info:
        from_nir(make())
    message = str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    assert "\n" not in message and all(n in message for n in needles), message


@pytest.mark.parametrize("dt", [0, 0.0, -1.0, float("nan"), float("inf"), "abc", "1e-3", True, None])
def test_bad_dt_arguments_are_one_line(dt: Any) -> None:
    graph = _one_neuron(_lif(tau=np.full(SHAPE, 2.0)))
    if dt is None:  # no argument and no metadata: the default step
        from_nir(graph, dt=dt)
        return
    with pytest.raises(NIRGraphError, match=r"^dt=.* is invalid: expected a finite number > 0"):
        from_nir(graph, dt=dt)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc"])
def test_snn_export_refuses_bad_dt_in_one_line(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        export_main(["checkpoint=missing.pt", f"dt={value}"])  # dt is checked before the checkpoint
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: dt={value!r}"), err
    assert "> 0" in err[0] and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_snn_export_console_script_refuses_dt_nan(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "snn-export"), "checkpoint=missing.pt", "dt=nan", "out=m.nir"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert errors == ["error: dt='nan' is invalid: expected a finite number > 0 (seconds)"], errors
