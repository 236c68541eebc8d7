"""Writing a report's files as one set: every file rendered to memory first, then written through
:func:`mlfsnn.files.atomic_write` so that a failure leaves the previous set as it was.

Used by snn-report (report.md, report.csv, best_trial.csv, the plots), ``snn-eval plots=true`` (the
spike plots) and snn-bench (bench.json, bench.md). matplotlib is not imported here: :func:`png_bytes`
only calls the figure it is given.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ReportError
from ..files import os_reason
from ..files import write_together as files_write_together

__all__ = ["png_bytes", "write_together"]


def png_bytes(fig: Any, **savefig: Any) -> bytes:
    """``fig`` (a matplotlib Figure) as PNG bytes; ``savefig`` goes to ``Figure.savefig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    return buf.getvalue()


def write_together(files: Sequence[tuple[Path, bytes]]) -> None:
    """:func:`mlfsnn.files.write_together`; any ``OSError`` becomes a one-line
    :class:`~mlfsnn.errors.ReportError` ``cannot write <file>: <reason>``."""
    try:
        files_write_together(files)
    except OSError as exc:
        path = Path(exc.filename)
        raise ReportError(f"cannot write {path}: {os_reason(exc, path)}") from exc
