"""snn-report: one table (Markdown + CSV) and a few plots over any number of run directories.

    snn-report multirun/2026-11-28/15-58-40            # one sweep; writes into <DIR>/report
    snn-report outputs/ multirun/ --out report/        # everything found below both

A run directory is any folder holding ``metrics.jsonl`` or ``summary.json`` (the run-directory
contract). Runs are grouped into configurations and the seeds of one configuration are aggregated:
mean ± sample standard deviation. A run without ``summary.json`` (crashed, or still training) is
reported as incomplete from its ``metrics.jsonl`` and ``.hydra/config.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.resources
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ReportError",
    "Row",
    "Run",
    "build_rows",
    "find_run_dirs",
    "load_paper_results",
    "load_run",
    "main",
]

# (column, config key): these always define a configuration, whether or not they vary.
DEFINING = (
    ("dataset", "dataset.name"),
    ("block", "model.block"),
    ("K", "neuron.levels"),
    ("depth", "model.depth"),
    ("T", "time_steps"),
    ("widths", "model.widths"),
)
# Keys that never split a configuration: the seed (aggregated over), and keys that change where
# things are written or how a run is driven, not what is trained.
IGNORED = (
    "trainer.seed",
    "trainer.resume",
    "trainer.progress",
    "trainer.num_workers",
    "trainer.pin_memory",
    "trainer.device",
    "trainer.eval_batch_size",
    "trainer.checkpoint_every",
    "dataset.root",
    "dataset.download",
    "paths",
    "logger",
    "hydra",
    "name",
)
_MISSING = object()


class ReportError(Exception):
    """A user error (missing directory, no runs): one line on stderr, exit status 2."""


@dataclass
class Run:
    """One run directory as read from disk; numbers come from summary.json when there is one."""

    path: Path
    label: str  # relative to the scanned directories: stable across machines
    config: dict[str, Any]  # flattened ("model.depth": 20)
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def status(self) -> str:
        if self.summary is None:
            return "incomplete"
        return str(self.summary.get("status") or "ok")

    @property
    def seed(self) -> Any:
        return self.config.get("trainer.seed")

    def _evaluated(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics if _finite(r.get("test_acc"))]

    def _summary_or(self, key: str, fallback: Any) -> Any:
        # summary.json is authoritative; metrics.jsonl stands in for a run that has none (yet).
        value = (self.summary or {}).get(key)
        return value if _finite(value) else fallback

    @property
    def best_acc(self) -> float | None:
        return self._summary_or(
            "best_test_acc", max((r["test_acc"] for r in self._evaluated()), default=None)
        )

    @property
    def final_acc(self) -> float | None:
        evaluated = self._evaluated()
        return self._summary_or("final_test_acc", evaluated[-1]["test_acc"] if evaluated else None)

    @property
    def epochs(self) -> int | None:
        epochs = [r["epoch"] for r in self.metrics if isinstance(r.get("epoch"), int)]
        return self._summary_or("epochs_completed", max(epochs, default=None))

    @property
    def num_params(self) -> int | None:
        return self._summary_or("num_params", None)

    def last_value(self, key: str) -> Any:
        """``key`` from the last metrics row that has it, else from the summary."""
        for row in reversed(self.metrics):
            if row.get(key) is not None:
                return row[key]
        return (self.summary or {}).get(key)

    def curve(self) -> list[tuple[int, float]]:
        return [
            (r["epoch"], float(r["test_acc"])) for r in self._evaluated() if isinstance(r.get("epoch"), int)
        ]


@dataclass
class Row:
    """One configuration: the values of the defining and varying keys, and its runs (seeds)."""

    values: dict[str, Any]  # config key -> value
    runs: list[Run]
    paper: list[dict[str, Any]] = field(default_factory=list)
    number: int = 0

    def stat(self, attr: str) -> tuple[float | None, float | None, int]:
        return _stat([getattr(r, attr) for r in self.runs])

    def mean_of(self, key: str) -> float | None:
        return _stat([r.last_value(key) for r in self.runs])[0]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _stat(values: list[Any]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for one value, n) over the finite values."""
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    # Lists stay leaves: model.widths is one value, not three keys.
    if not isinstance(node, dict):
        return {prefix: node} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _lenient_container(node: Any) -> Any:
    """Resolve what resolves; keep the ``${...}`` text of an interpolation that does not (e.g. a
    resolver only registered inside Hydra), so one odd key cannot hide the whole config."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, (DictConfig, ListConfig)):
        raw = OmegaConf.to_container(node, resolve=False)
        keys = list(node.keys()) if isinstance(node, DictConfig) else list(range(len(node)))
        out = {} if isinstance(node, DictConfig) else []
        for key in keys:
            try:
                value = _lenient_container(node[key])
            except OmegaConfBaseException:
                value = raw[key]
            if isinstance(out, dict):
                out[str(key)] = value
            else:
                out.append(value)
        return out
    return node


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory below ``root`` (itself included) holding metrics.jsonl or summary.json."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if "metrics.jsonl" in filenames or "summary.json" in filenames:
            found.append(here)
            dirnames[:] = []  # a run does not contain runs; and skip its checkpoints
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return found


def load_run(path: Path, label: str) -> Run:
    """Read one run directory; damaged files become ``problems``, never exceptions."""
    problems: list[str] = []
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            problems.append(f"summary.json unreadable ({exc})")
            summary = None
    metrics: list[dict[str, Any]] = []
    if (path / "metrics.jsonl").is_file():
        for i, line in enumerate((path / "metrics.jsonl").read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                problems.append(f"metrics.jsonl line {i} unreadable")  # e.g. cut short by a crash
                continue
            if isinstance(row, dict):
                metrics.append(row)
    config: dict[str, Any] = {}
    if summary is not None and isinstance(summary.get("config"), dict):
        config = summary["config"]
    elif (path / ".hydra" / "config.yaml").is_file():
        from omegaconf import OmegaConf

        try:
            config = _lenient_container(OmegaConf.load(path / ".hydra" / "config.yaml"))
        except Exception as exc:  # a damaged YAML file: report the run, do not stop the report
            problems.append(f".hydra/config.yaml unreadable ({type(exc).__name__})")
    if not config:
        problems.append("no configuration (neither summary.json nor .hydra/config.yaml)")
    return Run(path, label, _flatten(config), metrics, summary, problems)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED)


def varying_keys(runs: list[Run]) -> dict[str, list[Any]]:
    """Non-defining keys with two or more values among the runs that have them, with those values.

    A key that some runs lack (a dataset-specific option) varies only if the runs that have it disagree.
    """
    defining = {key for _, key in DEFINING}
    values: dict[str, dict[str, Any]] = {}
    for run in runs:
        for key, value in run.config.items():
            if key not in defining and not _ignored(key):
                values.setdefault(key, {})[_canon(value)] = value
    return {k: sorted(v.values(), key=_sort_key) for k, v in sorted(values.items()) if len(v) > 1}


def _sort_key(value: Any) -> tuple:
    # Numbers before strings before lists before missing; numbers compare numerically (depth 8 < 14).
    if value is None or value is _MISSING:
        return (4, 0)
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, float(value))
    if isinstance(value, (list, tuple)):
        return (3, tuple(_sort_key(v) for v in value))
    return (2, str(value))


def _natural(text: str) -> list:
    # Multirun job folders sort 0, 1, 2, ..., 10 rather than 0, 1, 10, 2.
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def match_paper(values: dict[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    wanted = {
        "dataset": values.get("dataset.name"),
        "block": values.get("model.block"),
        "levels": values.get("neuron.levels"),
        "depth": values.get("model.depth"),
        "time_steps": values.get("time_steps"),
    }
    return [
        e
        for e in entries
        if e.get("kind") == "this_paper" and all(e.get(k, _MISSING) == v for k, v in wanted.items())
    ]


def build_rows(runs: list[Run], paper: list[dict[str, Any]]) -> tuple[list[Row], list[str]]:
    """Group runs with a configuration into rows (sorted); returns the rows and the key columns."""
    usable = [r for r in runs if r.config]
    keys = [key for _, key in DEFINING] + list(varying_keys(usable))
    groups: dict[tuple, Row] = {}
    for run in usable:
        values = {k: run.config.get(k) for k in keys}
        row = groups.setdefault(tuple(_canon(values[k]) for k in keys), Row(values, []))
        row.runs.append(run)
    rows = sorted(groups.values(), key=lambda r: [_sort_key(r.values[k]) for k in keys])
    for number, row in enumerate(rows, 1):
        row.number = number
        row.runs.sort(key=lambda r: (_sort_key(r.seed), _natural(r.label)))
        row.paper = match_paper(row.values, paper)
    return rows, keys


def load_paper_results() -> list[dict[str, Any]]:
    """The reference numbers shipped with the package (``paper_results.yaml``)."""
    import yaml

    text = importlib.resources.files("mlfsnn").joinpath("paper_results.yaml").read_text()
    entries = (yaml.safe_load(text) or {}).get("entries") or []
    return [e for e in entries if isinstance(e, dict)]


def _label_runs(dirs: list[Path]) -> list[tuple[Path, str]]:
    """(run dir, label) for every run below ``dirs``, labelled relative to their common parent so that
    a report reads the same wherever the runs live; overlapping DIRs list a run once."""
    base = Path(os.path.commonpath([d.resolve() for d in dirs]))
    seen: dict[Path, str] = {}
    for d in dirs:
        for run_dir in find_run_dirs(d):
            real = run_dir.resolve()
            rel = Path(os.path.relpath(real, base)).as_posix()
            seen.setdefault(real, real.name if rel == "." else rel)
    return sorted(seen.items(), key=lambda kv: _natural(kv[1]))


# --- tables ---------------------------------------------------------------------------------------

_HEADER = {key: col for col, key in DEFINING}


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "/".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _num(value: Any) -> str:
    """A CSV number: plain, rounded to 6 decimals so float noise cannot change the file."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def _si(value: float | None) -> str:
    if value is None:
        return ""
    for exp, suffix in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10**exp:
            return f"{value / 10**exp:.3g}{suffix}"
    return f"{value:.3g}"


def _acc_cell(row: Row, attr: str) -> str:
    mean, std, n = row.stat(attr)
    if mean is None:
        return "–"
    cell = f"{mean:.2f} ± {'–' if std is None else f'{std:.2f}'}"
    return cell if n == len(row.runs) else f"{cell} (n={n})"


def _params(row: Row) -> list[int]:
    return sorted({r.num_params for r in row.runs if r.num_params is not None})


def _epochs(row: Row) -> tuple[int | None, int | None]:
    epochs = [r.epochs for r in row.runs if r.epochs is not None]
    return (min(epochs), max(epochs)) if epochs else (None, None)


def _count(row: Row) -> str:
    incomplete = sum(not r.complete for r in row.runs)
    failed = sum(r.complete and r.status != "ok" for r in row.runs)
    notes = [f"{k} {what}" for k, what in ((incomplete, "incomplete"), (failed, "failed")) if k]
    return f"{len(row.runs)} ({', '.join(notes)})" if notes else str(len(row.runs))


def _paper_cell(row: Row) -> str:
    return "; ".join(
        f"{e['test_acc']:.2f} (paper{'' if e.get('verified') else ', unverified'})" for e in row.paper
    )


def describe(row: Row, keys: list[str]) -> str:
    """A one-line name for a configuration: ``cifar10 ds-20 K=3 T=4 64/128/256 optimizer.lr=0.1``."""
    v = {k: format_value(x) for k, x in row.values.items()}
    net = f"{v['dataset.name']} {v['model.block']}-{v['model.depth']}"
    extras = [f"{k}={v[k]}" for k in keys if k not in _HEADER and row.values.get(k) is not None]
    return " ".join([net, f"K={v['neuron.levels']}", f"T={v['time_steps']}", v["model.widths"], *extras])


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(rows: list[Row], keys: list[str]) -> str:
    sops = any(row.mean_of("sops_per_sample") is not None for row in rows)
    header = ["#", *(_HEADER.get(k, k) for k in keys), "params", "best acc (%)", "final acc (%)", "n"]
    header += ["SOPs/sample"] * sops + ["epochs", "paper acc (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lo, hi = _epochs(row)
        cells = [str(row.number), *(format_value(row.values[k]) for k in keys)]
        cells += [" / ".join(f"{p:,}" for p in _params(row)), _acc_cell(row, "best_acc")]
        cells += [_acc_cell(row, "final_acc"), _count(row)]
        cells += [_si(row.mean_of("sops_per_sample"))] * sops
        cells += ["" if lo is None else str(lo) if lo == hi else f"{lo}–{hi}", _paper_cell(row)]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def csv_rows(rows: list[Row], keys: list[str]) -> list[list[str]]:
    header = ["row", *(_HEADER.get(k, k) for k in keys), "params", "n_runs", "n_incomplete", "n_failed"]
    for stat in ("best_acc", "final_acc"):
        header += [f"{stat}_mean", f"{stat}_std", f"{stat}_n"]
    header += ["sops_per_sample_mean", "ann_macs_per_sample_mean", "epochs_min", "epochs_max"]
    header += ["paper_acc", "paper_verified", "paper_id", "seeds", "runs"]
    out = [header]
    for row in rows:
        params = _params(row)
        line = [str(row.number), *(format_value(row.values[k]) for k in keys)]
        line += [_num(params[0]) if len(params) == 1 else " ".join(map(str, params)), str(len(row.runs))]
        line += [str(sum(not r.complete for r in row.runs))]
        line += [str(sum(r.complete and r.status != "ok" for r in row.runs))]
        for attr in ("best_acc", "final_acc"):
            line += [_num(x) for x in row.stat(attr)]
        line += [_num(row.mean_of("sops_per_sample")), _num(row.mean_of("ann_macs_per_sample"))]
        line += [_num(x) for x in _epochs(row)]
        first = row.paper[0] if row.paper else {}
        line += [_num(first.get("test_acc")), _num(first.get("verified")) if first else ""]
        line += [first.get("id", ""), " ".join(format_value(r.seed) for r in row.runs)]
        line += [" ".join(r.label for r in row.runs)]
        out.append(line)
    return out


def markdown(
    rows: list[Row],
    keys: list[str],
    runs: list[Run],
    paper: list[dict[str, Any]],
    plots: list,
    sources: list[str],
) -> str:
    """The whole report.md: table, notes, keys, runs per row, incomplete runs, references, plots."""
    usable = [r for r in runs if r.config]
    incomplete = sum(not r.complete for r in runs)
    out = [
        "# Run report",
        "",
        f"{len(rows)} configuration(s) from {len(runs)} run(s)"
        + (f" ({incomplete} incomplete)" if incomplete else "")
        + f" found under {', '.join(f'`{r}`' for r in sources)}.",
        "",
        markdown_table(rows, keys),
        "",
        "Accuracy: top-1 test accuracy in %, mean ± sample standard deviation over the seeds of a "
        "configuration (– for a single run); best = each run's best evaluated epoch, final = its last "
        "evaluated epoch. n counts runs; an incomplete run (no summary.json) counts with what its "
        "metrics.jsonl holds so far. SOPs/sample: synaptic operations per test sample, mean over seeds. "
        "Paper figures match on dataset, block, K, depth and T; unverified ones are not yet checked "
        "against the PDF.",
        "",
        "## Configuration keys",
        "",
        "Defining (always): " + ", ".join(f"`{k}`" for _, k in DEFINING) + ".",
        "",
    ]
    varying = {k: v for k, v in _all_values(usable).items() if len(v) > 1}
    if varying:
        out.append("Varying across these runs:")
        out += [f"- `{k}`: {', '.join(format_value(x) or 'null' for x in v)}" for k, v in varying.items()]
    else:
        out.append("Nothing varies across these runs.")
    out += [
        "",
        "Aggregated over or never compared: " + ", ".join(f"`{p}`" for p in IGNORED) + ".",
        "",
        "## Runs per row",
        "",
        "| # | configuration | seeds | runs |",
        "|---|---|---|---|",
    ]
    for row in rows:
        seeds = ", ".join(format_value(r.seed) for r in row.runs)
        runs_cell = ", ".join(f"`{r.label}`" for r in row.runs)
        out.append(f"| {row.number} | {_md_escape(describe(row, keys))} | {seeds} | {runs_cell} |")
    out += ["", "## Incomplete and failed runs", ""]
    row_of = {id(r): row.number for row in rows for r in row.runs}
    problems = [r for r in runs if not r.complete or r.status != "ok" or r.problems]
    for r in problems:
        where = f"row {row_of[id(r)]}" if id(r) in row_of else "not in the table"
        what = ["no summary.json (incomplete)"] if not r.complete else []
        what += [f"status {r.status}"] if r.complete and r.status != "ok" else []
        what += [*r.problems, f"{len(r.metrics)} epoch(s) in metrics.jsonl"]
        out.append(f"- `{r.label}` ({where}): {'; '.join(what)}")
    if not problems:
        out.append("None.")
    out += ["", "## References", ""]
    out += _references(paper)
    out += ["", "## Plots", ""]
    for plot in plots:
        if plot.path is not None:
            out += [f"![{plot.title}]({plot.path.name})", ""]
    out += [f"- {plot.title}: skipped ({plot.reason})" for plot in plots if plot.path is None]
    return "\n".join(out) + "\n"


def _all_values(runs: list[Run]) -> dict[str, list[Any]]:
    values = {key: {_canon(r.config.get(key)): r.config.get(key) for r in runs} for _, key in DEFINING}
    merged = {k: sorted(v.values(), key=_sort_key) for k, v in values.items()}
    return {**merged, **varying_keys(runs)}


def _references(paper: list[dict[str, Any]]) -> list[str]:
    if not paper:
        return ["No reference figures (paper_results.yaml missing or empty)."]
    lines = [
        "| method | dataset | network | K | T | test acc (%) | verified | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in sorted(
        paper, key=lambda e: (e.get("kind") != "this_paper", e.get("method", ""), e.get("id", ""))
    ):
        network = e.get("network") or (
            f"{str(e['block']).upper()}-ResNet-{e['depth']}" if "block" in e and "depth" in e else ""
        )
        cells = [e.get("method", ""), e.get("dataset", ""), network, format_value(e.get("levels"))]
        cells += [format_value(e.get("time_steps")), f"{e.get('test_acc', float('nan')):.2f}"]
        cells += ["yes" if e.get("verified") else "no", e.get("source", "")]
        lines.append("| " + " | ".join(_md_escape(str(c)) for c in cells) + " |")
    return lines


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


def report(dirs: list[Path], out: Path | None = None) -> dict[str, Any]:
    """Find, group and write everything; returns what was written. Raises :class:`ReportError`."""
    from . import report_plots

    for d in dirs:
        if not d.is_dir():
            raise ReportError(f"no such directory: {d}")
    labelled = _label_runs(dirs)
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
    plots = report_plots.make_plots(rows, keys, out)
    sources = [d.resolve().name or str(d) for d in dirs]
    (out / "report.md").write_text(markdown(rows, keys, runs, paper, plots, sources).rstrip() + "\n")
    with open(out / "report.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(csv_rows(rows, keys))
    written = [out / "report.md", out / "report.csv"] + [p.path for p in plots if p.path is not None]
    return {"table": markdown_table(rows, keys), "written": written, "rows": rows, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``snn-report DIR... [--out OUTDIR]``."""
    args = _parse(argv)
    try:
        result = report(args.dirs, args.out)
    except (ReportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["table"])
    for path in result["written"]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
