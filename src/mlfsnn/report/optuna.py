"""The best trial of Optuna sweeps (``+experiment=optuna_digits``), for snn-report.

The sweeper (mlfsnn's own, and hydra-optuna-sweeper before it) writes ``optimization_results.yaml``
into the sweep directory when a session of the search ends: ``best_params`` (search-space key ->
value) and ``best_value`` (the objective: the trial's best validation accuracy), or ``solutions``
for a multi-objective search. Each trial is an ordinary run
directory below it, so the runs are tabulated like any multirun; this module finds the files, names
the run whose configuration matches the best parameters, and renders a section of report.md, the
rows of best_trial.csv and the lines snn-report prints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runs import Run, canon

__all__ = [
    "RESULTS",
    "BestTrial",
    "best_trial_csv",
    "best_trial_lines",
    "best_trial_markdown",
    "find_best_trials",
    "insert_section",
]

RESULTS = "optimization_results.yaml"


@dataclass
class BestTrial:
    """One sweep's best trial as its ``optimization_results.yaml`` records it."""

    sweep: str  # the sweep directory, relative to the scanned directories' common parent
    params: dict[str, Any]
    value: Any  # a number; a list for one solution of a multi-objective search
    run: str | None = None  # label of the run directory whose configuration matches
    problems: list[str] = field(default_factory=list)


def _results_files(root: Path) -> list[Path]:
    """The results files below ``root`` (itself included); run directories are not entered."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if RESULTS in filenames:
            found.append(Path(dirpath) / RESULTS)
        if "metrics.jsonl" in filenames or "summary.json" in filenames:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return found


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return canon(a) == canon(b) or str(a) == str(b)


def _matching_run(sweep: Path, params: dict[str, Any], runs: list[Run]) -> str | None:
    """The first run of ``sweep`` whose config holds every best parameter (group choices aside)."""
    for run in runs:
        if run.path.resolve().parent != sweep:
            continue
        keys = [k for k in params if k in run.config]
        if keys and all(_same(run.config[k], params[k]) for k in keys):
            return run.label
    return None


def _read(path: Path, label: str, runs: list[Run]) -> list[BestTrial]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return [BestTrial(label, {}, None, problems=[f"{RESULTS} unreadable ({type(exc).__name__})"])]
    sweep = path.parent.resolve()
    if isinstance(data.get("solutions"), list):  # multi-objective: the Pareto front
        found = [s for s in data["solutions"] if isinstance(s, dict)]
        solutions = [(dict(s.get("params") or {}), s.get("values")) for s in found]
    elif data.get("best_params") is None and "counts" in data:  # mlfsnn's sweeper, nothing complete yet
        return [BestTrial(label, {}, None, problems=["no completed trial yet"])]
    else:
        solutions = [(dict(data.get("best_params") or {}), data.get("best_value"))]
    job = data.get("best_job_dir")  # mlfsnn's sweeper names the best trial's directory
    named = [r.label for r in runs if job is not None and r.path.resolve() == sweep / str(job)]
    return [
        BestTrial(label, p, v, named[0] if named else _matching_run(sweep, p, runs)) for p, v in solutions
    ]


def find_best_trials(dirs: list[Path], runs: list[Run]) -> list[BestTrial]:
    """The best trial of every Optuna sweep below ``dirs``, labelled like the runs."""
    base = Path(os.path.commonpath([d.resolve() for d in dirs]))
    files = {p.resolve() for d in dirs for p in _results_files(d)}
    out = []
    for path in sorted(files):
        rel = Path(os.path.relpath(path.parent, base)).as_posix()
        out += _read(path, path.parent.name if rel == "." else rel, runs)
    return out


def _param_keys(trials: list[BestTrial]) -> list[str]:
    return list(dict.fromkeys(k for t in trials for k in t.params))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_cell(v) for v in value)
    return "" if value is None else str(value)


def best_trial_markdown(trials: list[BestTrial]) -> list[str]:
    """The "Optuna: best trial" section of report.md (nothing when there is no Optuna sweep)."""
    if not trials:
        return []
    keys = _param_keys(trials)
    out = [
        "## Optuna: best trial",
        "",
        f"From each sweep's `{RESULTS}`: the trial with the highest objective, its best validation "
        "accuracy (%), and its parameters; run = the trial's run directory in the table above.",
        "",
        "| sweep | run | best val acc (%) | " + " | ".join(f"`{k}`" for k in keys) + " |",
        "|" + "---|" * (3 + len(keys)),
    ]
    for t in trials:
        cells = [f"`{t.sweep}`", f"`{t.run}`" if t.run else "–", _cell(t.value) or "–"]
        cells += [_cell(t.params.get(k)) for k in keys]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out += [f"- `{t.sweep}`: {'; '.join(t.problems)}" for t in trials if t.problems]
    return out


def best_trial_csv(trials: list[BestTrial]) -> list[list[str]]:
    """best_trial.csv, header first: one row per best trial, one column per parameter."""
    keys = _param_keys(trials)
    rows = [["sweep", "run", "best_val_acc", *keys]]
    for t in trials:
        value = t.value if isinstance(t.value, (int, float)) else _cell(t.value)
        rows.append(
            [
                t.sweep,
                t.run or "",
                str(value) if value is not None else "",
                *(str(t.params.get(k, "")) for k in keys),
            ]
        )
    return rows


def best_trial_lines(trials: list[BestTrial]) -> list[str]:
    """What snn-report prints under its table: one line per best trial."""
    out = []
    for t in trials:
        params = " ".join(f"{k}={_cell(v)}" for k, v in t.params.items())
        run = f" (run {t.run})" if t.run else ""
        out.append(f"best trial of {t.sweep}{run}: best val acc {_cell(t.value) or '?'} with {params}")
    return out


def insert_section(text: str, section: list[str], before: str = "## Configuration keys") -> str:
    """``text`` (report.md) with ``section`` inserted before the heading ``before`` (else at the end)."""
    if not section:
        return text
    block = "\n".join(section) + "\n\n"
    at = text.find(f"\n{before}\n")
    return text[: at + 1] + block + text[at + 1 :] if at >= 0 else text.rstrip() + "\n\n" + block
