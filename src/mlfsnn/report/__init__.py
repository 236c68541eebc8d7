"""snn-report's library side: one table (Markdown + CSV) and a few plots over run directories.

A run directory is any folder holding ``metrics.jsonl`` or ``summary.json`` (the run-directory
contract). Runs are grouped into configurations and the seeds of one configuration are aggregated:
mean ± sample standard deviation. Runs with a validation split also report the test accuracy at
their best-val epoch (honest model selection) next to the paper's best-test convention. A run
without ``summary.json`` (crashed, or still training) is reported as incomplete from its
``metrics.jsonl`` and ``.hydra/config.yaml``.

:mod:`.runs` reads and groups, :mod:`.tables` renders report.md / report.csv, :mod:`.plots` draws the
PNGs, :mod:`.optuna` adds the best trial of Optuna sweeps (a report.md section, best_trial.csv).
This package reads run directories only; it imports nothing that trains.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ReportError
from .optuna import best_trial_csv, best_trial_lines, best_trial_markdown, find_best_trials, insert_section
from .runs import Row, Run, build_rows, find_run_dirs, label_runs, load_paper_results, load_run
from .tables import csv_rows, markdown, markdown_table

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
    if out is None:
        common = Path(os.path.commonpath([d.resolve() for d in dirs]))
        out = common / "report"
    out.mkdir(parents=True, exist_ok=True)
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
    (out / "report.md").write_text(text.rstrip() + "\n")
    with open(out / "report.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(csv_rows(rows, keys))
    written = [out / "report.md", out / "report.csv"]
    if trials:
        with open(out / "best_trial.csv", "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(best_trial_csv(trials))
        written.append(out / "best_trial.csv")
    written += [p.path for p in plots if p.path is not None]
    table, best = markdown_table(rows, keys), best_trial_lines(trials)
    return {"table": table, "best_trials": best, "written": written, "rows": rows, "runs": runs}
