"""snn-report: one table (Markdown + CSV) and a few plots over any number of run directories.

    snn-report multirun/2026-11-28/15-58-40            # one sweep; writes into <DIR>/report
    snn-report outputs/ multirun/ --out report/        # everything found below both

See :mod:`mlfsnn.report` for what counts as a run and how runs are grouped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ReportError
from ..report import report
from ._common import one_line, user_errors_exit

__all__ = ["main"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="snn-report",
        description="Tables (report.md, report.csv) and plots over run directories and multirun trees.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run directories or trees of them")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <common parent of DIR>/report)"
    )
    return parser.parse_args(argv)


def _report(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return report(args.dirs, args.out)
    except OSError as exc:  # an unwritable --out or an unreadable tree is the user's to fix, not a bug
        # report() names the file of every write it makes; this is for what it does not foresee.
        where = f"{exc.filename}: " if exc.filename else ""
        raise ReportError(f"{where}{exc.strerror or one_line(exc)}") from exc


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``snn-report DIR... [--out OUTDIR]``; a user error exits 2 with one line."""
    args = _parse(argv)
    result = user_errors_exit(lambda: _report(args))
    print(result["table"])
    for line in result.get("best_trials", []):  # Optuna sweeps
        print(line)
    for path in result["written"]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
