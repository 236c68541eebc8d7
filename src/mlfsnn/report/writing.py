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
from ..files import atomic_write, os_reason

__all__ = ["png_bytes", "write_together"]


def png_bytes(fig: Any, **savefig: Any) -> bytes:
    """``fig`` (a matplotlib Figure) as PNG bytes; ``savefig`` goes to ``Figure.savefig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    return buf.getvalue()


def write_together(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write every ``(path, data)``; all of them or, on an error, none (previous files untouched).

    Each file goes to a temp file beside it and the renames wait until every temp file is written and
    synced: the first file's rename happens last. A full disk fails while writing a temp file, before
    any rename, so the folder keeps its previous files, all of one report. A link at a name is
    replaced, its target left alone. Any ``OSError`` becomes a :class:`~mlfsnn.errors.ReportError`
    ``cannot write <file>: <reason>``.
    """
    if not files:
        return
    (path, data), rest = files[0], files[1:]
    try:
        # The later files are written (and renamed) inside before_replace, i.e. once this file's
        # temp copy is safely on disk and before it is renamed into place.
        atomic_write(path, lambda f: f.write(data), before_replace=lambda: write_together(rest))
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {os_reason(exc, path)}") from exc
