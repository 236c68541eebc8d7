"""snn-export: write a checkpoint's network as a NIR graph (docs/export.md).

    snn-export checkpoint=outputs/.../checkpoints/best.pt out=model.nir
    snn-export checkpoint=RUN_DIR target=norse

The model is rebuilt from the config stored in the checkpoint (``key=value`` overrides apply to that
config, as for snn-eval); no dataset is loaded. tdBN is folded into the convolutions, each MLF neuron
becomes K NIR LIF nodes, and the graph's Output is read out as the mean over time steps. ``out``
defaults to ``model.nir`` in the run directory (a bare file name goes there too, a path with a folder
where it says); ``target`` is nir (default), snntorch, norse (the graph snnTorch's, norse's and
nirtorch's importers run as shipped; target=snntorch refuses what snnTorch cannot run, target=norse
writes norse's default dt 1e-3) or spec (the literal NIR mapping); ``dt`` (default 1e-4, 1e-3 for
norse) is the step of the LIF mapping ``tau = dt / (1 - decay)``. The file is read back and run
against the model; a summary (with what each consumer makes of the graph) is printed as JSON.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import key_values, user_errors_exit

USAGE = (
    "usage: snn-export checkpoint=<file or run dir> [out=<file.nir>] [target=nir|snntorch|norse|spec] "
    "[dt=<seconds>] [key=value ...]"
)
TARGETS = ("nir", "snntorch", "norse", "spec")  # = mlfsnn.runner.export.TARGETS, without importing torch


def parse(argv: list[str]) -> tuple[Path, Path | None, float | None, str, list[str]]:
    """``(checkpoint, out, dt, target, overrides)`` from ``key=value`` arguments; ``--help`` exits 0."""
    mine, overrides = key_values(argv, ("checkpoint", "out", "dt", "target"), USAGE, __doc__)
    target = mine.get("target", "nir")
    if target not in TARGETS:
        raise ConfigError(f"target={target!r} is invalid: expected one of {', '.join(TARGETS)}")
    out = Path(mine["out"]).expanduser() if "out" in mine else None
    dt = None
    if "dt" in mine:
        try:
            dt = float(mine["dt"])
        except ValueError:
            dt = math.nan
        if not 0 < dt < math.inf:  # nan, inf, 0 and negatives parse as floats too
            raise ConfigError(f"dt={mine['dt']!r} is invalid: expected a finite number > 0 (seconds)")
    ckpt = Path(mine["checkpoint"]).expanduser()
    from ..runner.evaluate import resolve_checkpoint  # torch: only once --help is ruled out

    return resolve_checkpoint(ckpt), out, dt, target, overrides


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``snn-export``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run() -> dict[str, Any]:
        ckpt, out, dt, target, overrides = parse(sys.argv[1:] if argv is None else argv)
        from ..runner.export import export_checkpoint

        return export_checkpoint(ckpt, overrides, out, dt, target)

    result = user_errors_exit(run)
    print(json.dumps(result, indent=2), flush=True)
    print(f"wrote {result['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
