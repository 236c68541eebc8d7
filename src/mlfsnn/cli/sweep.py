"""snn-sweep status: every point of a sweep and its state, so you know what a rerun will do.

    snn-sweep status multirun/2026-12-02/15-20-00-ab12     # a grid (snn-train -m ...)
    snn-sweep status multirun/optuna --json                # an Optuna search, machine-readable

States: done, pruned, running (another process holds it), interrupted (a rerun of the sweep's
command with trainer.resume=auto continues it; an Optuna rerun retries it), failed, not started.
Nothing in the sweep directory is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import user_errors_exit

__all__ = ["main"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="snn-sweep", description="The state of a sweep's points.")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="list every point of a sweep and its state")
    status.add_argument("dir", type=Path, metavar="DIR", help="a sweep directory (it holds multirun.yaml)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def _acc(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "–"


def render(status: object) -> str:
    """The table snn-sweep status prints."""
    from ..runner.sweep_status import SweepStatus

    assert isinstance(status, SweepStatus)
    head = ["point", "state", "best val", "best test", "epochs", "trial" if status.kind == "optuna" else ""]
    rows = [
        [p.dir, p.state, _acc(p.best_val_acc), _acc(p.best_test_acc), str(p.epochs or "–"),
         str(p.trial) if p.trial is not None else ""]
        for p in status.points
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"{status.kind} sweep {status.sweep}: {len(status.points)} point(s)"]
    lines += [status.note] if status.note else []
    for row, what in [
        (head, "overrides" if status.kind == "grid" else "parameters"),
        *zip(rows, [p.what for p in status.points], strict=True),
    ]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + "  " + what)
    lines.append(", ".join(f"{n} {state}" for state, n in status.counts().items()) or "no points")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``snn-sweep status DIR [--json]``; a user error exits 2 with one line."""
    args = _parse(argv)
    from ..runner.sweep_status import sweep_status

    status = user_errors_exit(lambda: sweep_status(args.dir))
    print(json.dumps(status.to_json(), indent=2) if args.json else render(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
