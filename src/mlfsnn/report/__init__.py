"""snn-report's library side: one table (Markdown + CSV) and a few plots over run directories.

A run directory is any folder holding ``metrics.jsonl`` or ``summary.json`` (the run-directory
contract). Runs are grouped into configurations and the seeds of one configuration are aggregated:
mean ± sample standard deviation. Runs with a validation split also report the test accuracy at
their best-val epoch (honest model selection) next to the paper's best-test convention. A run
without ``summary.json`` (crashed, or still training) is reported as incomplete from its
``metrics.jsonl`` and ``.hydra/config.yaml``.

:mod:`.rundirs` finds and reads run directories, :mod:`.runs` groups, :mod:`.tables` renders
report.md / report.csv, :mod:`.plots` draws the PNGs, :mod:`.optuna` adds the best trial of Optuna
sweeps (a report.md section, best_trial.csv), :mod:`.dormant` the four dormant readings snn-eval
stored beside each run (a section, dormant_readings.csv), :mod:`.writing` writes them all as one set (no link
followed, a full disk leaves the previous report whole). This package reads run directories only; it
imports nothing that trains.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ReportError
from ..files import LinkRefused, ensure_dir
from .dormant import readings_csv, readings_markdown
from .optuna import best_trial_csv, best_trial_lines, best_trial_markdown, find_best_trials, insert_section
from .rundirs import find_run_dirs, label_runs, load_run
from .runs import Row, Run, build_rows, load_paper_results
from .tables import csv_rows, markdown, markdown_table
from .writing import write_together

__all__ = [
    "ReportError",
    "Row",
    "Run",
    "build_rows",
    "find_run_dirs",
    "load_paper_results",
    "load_run",
    "report",
]


def report(dirs: list[Path], out: Path | None = None) -> dict[str, Any]:
    """Find, group and write everything; returns what was written. Raises :class:`ReportError`.

    ``out`` defaults to ``<common parent of dirs>/report``. The result holds ``table`` (the Markdown
    summary table), ``best_trials`` (a line per Optuna sweep found, see :mod:`.optuna`), ``written``
    (paths), ``rows`` and ``runs``.
    """
    for d in dirs:
        if not d.is_dir():
            raise ReportError(f"no such directory: {d}")
    labelled = label_runs(dirs)
    if not labelled:
        where = ", ".join(map(str, dirs))
        raise ReportError(f"no run directories (a folder with metrics.jsonl or summary.json) under {where}")
    chosen = out is not None
    if out is None:
        common = Path(os.path.commonpath([d.resolve() for d in dirs]))
        out = common / "report"
    try:
        if chosen:  # a link named with --out is the user's choice
            out.mkdir(parents=True, exist_ok=True)
        else:  # a link at the folder name mlfsnn picks was planted: its target is not ours to fill
            ensure_dir(out)
    except LinkRefused as exc:
        raise ReportError(f"{exc}, or name the folder with --out") from exc
    except OSError as exc:
        raise ReportError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    runs = [load_run(path, label) for path, label in labelled]
    try:
        paper = load_paper_results()
    except Exception as exc:  # a packaging slip or a bad edit of the YAML must not cost the report
        print(f"warning: paper_results.yaml unreadable ({exc}); no paper figures", file=sys.stderr)
        paper = []
    rows, keys = build_rows(runs, paper)
    from .plots import make_plots  # matplotlib is slow to import and only the plots need it

    plots = make_plots(rows, keys, out)
    sources = [d.resolve().name or str(d) for d in dirs]
    trials = find_best_trials(dirs, runs)  # Optuna sweeps: their optimization_results.yaml
    text = insert_section(markdown(rows, keys, runs, paper, plots, sources), best_trial_markdown(trials))
    dormant = readings_markdown(rows, keys)  # what snn-eval measured on each run's checkpoint
    text = insert_section(text, dormant)
    # Everything is rendered before anything is written, and written as one set (write_together):
    # report.md comes first in the list, so it is renamed into place last. A failure (a full disk)
    # leaves every previous file as it was; and a reader who finds a new report.md finds the new
    # CSV and plots it describes beside it, since those were renamed before it.
    files = [
        (out / "report.md", (text.rstrip() + "\n").encode()),
        (out / "report.csv", _csv(csv_rows(rows, keys))),
    ]
    if trials:
        files.append((out / "best_trial.csv", _csv(best_trial_csv(trials))))
    if dormant:
        files.append((out / "dormant_readings.csv", _csv(readings_csv(rows, keys))))
    files += [(p.path, p.data) for p in plots if p.path is not None]
    write_together(files)
    if not dormant:  # an earlier report's readings would pass for these runs'
        for name in ("dormant_readings.csv", "dormant_readings.png"):
            (out / name).unlink(missing_ok=True)
    for p in plots:  # a stale plot from an earlier report would mislead; gone only once the rest stands
        if p.path is None:
            (out / p.name).unlink(missing_ok=True)
    written = [path for path, _ in files]
    table, best = markdown_table(rows, keys), best_trial_lines(trials)
    return {"table": table, "best_trials": best, "written": written, "rows": rows, "runs": runs}


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()
