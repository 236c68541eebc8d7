"""report.md and report.csv: the Markdown and CSV rendering of the rows built by :mod:`.runs`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .runs import DEFINING, IGNORED, Row, Run, any_val, canon, sort_key, varying_keys

__all__ = ["PlotEntry", "csv_rows", "describe", "format_value", "markdown", "markdown_table", "short_labels"]


class PlotEntry(Protocol):
    """What the report says about one plot; a structural type so the tables never import matplotlib's
    side of the package."""

    title: str
    path: Path | None
    reason: str


_HEADER = {key: col for col, key in DEFINING}


def format_value(value: Any) -> str:
    """A config value as a cell: lists joined by ``/`` (widths 64/128/256), booleans as YAML spells them."""
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


def _acc_cell(row: Row, attr: str, missing: str = "–") -> str:
    mean, std, n = row.stat(attr)
    if mean is None:
        return missing
    digits = 3 if attr.endswith("loss") else 2
    cell = f"{mean:.{digits}f} ± {'–' if std is None else f'{std:.{digits}f}'}"
    return cell if n == len(row.runs) else f"{cell} (n={n})"


def _params(row: Row) -> list[int]:
    return sorted({r.num_params for r in row.runs if r.num_params is not None})


def _epochs(row: Row) -> tuple[int | None, int | None]:
    epochs = [r.epochs for r in row.runs if r.epochs is not None]
    return (min(epochs), max(epochs)) if epochs else (None, None)


def _wall_hours(row: Row) -> float | None:
    times = [r.wall_time_s for r in row.runs if r.wall_time_s is not None]
    return sum(times) / 3600 if times else None


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}x"


def _has_energy(rows: list[Row]) -> bool:
    return any(row.mean_of("energy_ratio") is not None for row in rows)


def _failed(row: Row) -> int:
    """Runs that ended without a result of their own (a pruned Optuna trial did not fail)."""
    return sum(r.complete and r.status not in ("ok", "pruned") for r in row.runs)


def _pruned(row: Row) -> int:
    return sum(r.complete and r.status == "pruned" for r in row.runs)


def _count(row: Row) -> str:
    incomplete = sum(not r.complete for r in row.runs)
    counts = ((incomplete, "incomplete"), (_failed(row), "failed"), (_pruned(row), "pruned"))
    notes = [f"{k} {what}" for k, what in counts if k]
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


def short_labels(rows: list[Row], keys: list[str], drop: tuple[str, ...] = ()) -> dict[int, str]:
    """Legend text per row number: only the keys whose values differ between rows."""
    differing = [k for k in keys if k not in drop and len({repr(r.values.get(k)) for r in rows}) > 1]
    labels = {}
    for row in rows:
        parts = [f"{_HEADER.get(k, k)}={format_value(row.values.get(k))}" for k in differing]
        labels[row.number] = f"#{row.number} " + " ".join(parts) if parts else f"#{row.number}"
    return labels


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


# (Run attribute, Markdown header, CSV column stem). The val columns exist only when some run had a
# validation split; they come first because they are the honestly selected figures.
_VAL_COLUMNS = (
    ("test_at_best_val", "test @ best val (%)", "test_at_best_val"),
    ("best_val_acc", "best val (%)", "best_val_acc"),
)
_TEST_COLUMNS = (
    ("best_acc", "best test, paper conv. (%)", "best_acc"),
    ("final_acc", "final test (%)", "final_acc"),
)
# Degradation is a statement about the training set: the last epoch's training accuracy and loss.
_TRAIN_COLUMNS = (
    ("final_train_acc", "final train (%)", "final_train_acc"),
    ("final_train_loss", "final train loss", "final_train_loss"),
)


def _any_train(rows: list[Row]) -> bool:
    return any(r.final_train_acc is not None for row in rows for r in row.runs)


def markdown_table(rows: list[Row], keys: list[str]) -> str:
    """The summary table alone: the head of report.md and what snn-report prints."""
    sops = any(row.mean_of("sops_per_sample") is not None for row in rows)
    energy = _has_energy(rows)
    val = _VAL_COLUMNS if any_val(rows) else ()
    train = _TRAIN_COLUMNS if _any_train(rows) else ()
    shown = val + _TEST_COLUMNS + train
    header = ["#", *(_HEADER.get(k, k) for k in keys), "params", *(c[1] for c in shown), "n"]
    header += ["SOPs/sample"] * sops + ["energy ANN/SNN"] * energy + ["epochs", "paper acc (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lo, hi = _epochs(row)
        cells = [str(row.number), *(format_value(row.values[k]) for k in keys)]
        cells += [" / ".join(f"{p:,}" for p in _params(row))]
        cells += [_acc_cell(row, attr, missing="") for attr, _, _ in val]  # blank: the run had no split
        cells += [_acc_cell(row, attr) for attr, _, _ in _TEST_COLUMNS + train] + [_count(row)]
        cells += [_si(row.mean_of("sops_per_sample"))] * sops
        cells += [_ratio(row.mean_of("energy_ratio"))] * energy
        cells += ["" if lo is None else str(lo) if lo == hi else f"{lo}–{hi}", _paper_cell(row)]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def csv_rows(rows: list[Row], keys: list[str]) -> list[list[str]]:
    """report.csv, header first: one column per statistic so that a spreadsheet needs no parsing."""
    header = ["row", *(_HEADER.get(k, k) for k in keys), "params", "n_runs", "n_incomplete", "n_failed"]
    header.append("n_pruned")
    stats = _TEST_COLUMNS + (_VAL_COLUMNS if any_val(rows) else ()) + _TRAIN_COLUMNS
    for _, _, stem in stats:
        header += [f"{stem}_mean", f"{stem}_std", f"{stem}_n"]
    header += [
        "sops_per_sample_mean",
        "ann_macs_per_sample_mean",
        "energy_ratio_mean",
        "epochs_min",
        "epochs_max",
        "wall_time_h",  # the row's cost: every run's wall_time_s (all its processes), summed
    ]
    header += ["paper_acc", "paper_verified", "paper_id", "seeds", "runs"]
    out = [header]
    for row in rows:
        params = _params(row)
        line = [str(row.number), *(format_value(row.values[k]) for k in keys)]
        line += [_num(params[0]) if len(params) == 1 else " ".join(map(str, params)), str(len(row.runs))]
        line += [str(sum(not r.complete for r in row.runs))]
        line += [str(_failed(row)), str(_pruned(row))]
        for attr, _, _ in stats:
            line += [_num(x) for x in row.stat(attr)]
        line += [_num(row.mean_of("sops_per_sample")), _num(row.mean_of("ann_macs_per_sample"))]
        line += [_num(row.mean_of("energy_ratio"))]
        line += [_num(x) for x in _epochs(row)]
        line += [_num(_wall_hours(row))]
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
    plots: Sequence[PlotEntry],
    sources: list[str],
) -> str:
    """The whole report.md: table, notes, keys, runs per row, incomplete runs, references, plots."""
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
        *_accuracy_note(any_val(rows), _has_energy(rows)),
        "",
        *_keys_section([r for r in runs if r.config]),
        "",
        *_rows_section(rows, keys),
        "",
        *_problems_section(rows, runs),
        "",
        "## References",
        "",
        *_references(paper),
        "",
        *_plots_section(plots),
    ]
    return "\n".join(out) + "\n"


def _accuracy_note(val: bool, energy: bool = False) -> list[str]:
    """The paragraph under the table: what each accuracy column means and how it was selected."""
    note = (
        "Accuracy: top-1 accuracy in %, mean ± sample standard deviation over the seeds of a configuration "
        "(std – for a single run; (n=k) when only k of its runs have the figure). "
        "**best test, paper conv.** = each run's best test accuracy over its evaluated epochs, the "
        "paper's convention: it selects the epoch on the test set itself, so it is optimistic. "
        "final test = the last evaluated epoch. "
    )
    if val:
        note += (
            "**test @ best val** = the test accuracy of the epoch with the best accuracy on the held-out "
            "validation split (`dataset.val_fraction`): the epoch is selected without the test set, so "
            "this is the honest figure; best val = that validation accuracy. Both are blank for runs "
            "without a validation split. "
        )
    else:
        note += (
            "No run here has a validation split (`dataset.val_fraction` > 0), so no test-independent "
            "model selection is available. "
        )
    note += (
        "n counts runs; an incomplete run (no summary.json) counts with what its metrics.jsonl holds so "
        "far. SOPs/sample: synaptic operations per test sample, mean over seeds. Paper figures match on "
        "dataset, block, K, depth and T; unverified ones are not yet checked against the PDF."
    )
    if energy:
        note += (
            " energy ANN/SNN: the ANN twin's energy per test sample over the SNN's, mean over seeds; "
            "synaptic operations counted per level spike, real-valued layers as MACs on every time step "
            "(docs/method.md §10)."
        )
    return [note]


def _keys_section(usable: list[Run]) -> list[str]:
    out = [
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
    out += ["", "Aggregated over or never compared: " + ", ".join(f"`{p}`" for p in IGNORED) + "."]
    return out


def _rows_section(rows: list[Row], keys: list[str]) -> list[str]:
    out = ["## Runs per row", "", "| # | configuration | seeds | runs |", "|---|---|---|---|"]
    for row in rows:
        seeds = ", ".join(format_value(r.seed) for r in row.runs)
        runs_cell = ", ".join(f"`{r.label}`" for r in row.runs)
        out.append(f"| {row.number} | {_md_escape(describe(row, keys))} | {seeds} | {runs_cell} |")
    return out


def _problems_section(rows: list[Row], runs: list[Run]) -> list[str]:
    out = ["## Incomplete and failed runs", ""]
    # Run is an unhashable dataclass (eq=True), so the lookup goes by identity.
    row_of = {id(r): row.number for row in rows for r in row.runs}
    problems = [r for r in runs if not r.complete or r.status != "ok" or r.problems]
    for r in problems:
        where = f"row {row_of[id(r)]}" if id(r) in row_of else "not in the table"
        what = ["no summary.json (incomplete)"] if not r.complete else []
        error = (r.summary or {}).get("error")
        what += (
            [f"status {r.status}" + (f" ({error})" if error else "")]
            if r.complete and r.status != "ok"
            else []
        )
        what += [*r.problems, f"{len(r.metrics)} epoch(s) in metrics.jsonl"]
        out.append(f"- `{r.label}` ({where}): {'; '.join(what)}")
    if not problems:
        out.append("None.")
    return out


def _plots_section(plots: Sequence[PlotEntry]) -> list[str]:
    out = ["## Plots", ""]
    for plot in plots:
        if plot.path is not None:
            out += [f"![{plot.title}]({plot.path.name})", ""]
    out += [f"- {plot.title}: skipped ({plot.reason})" for plot in plots if plot.path is None]
    return out


def _all_values(runs: list[Run]) -> dict[str, list[Any]]:
    values = {key: {canon(r.config.get(key)): r.config.get(key) for r in runs} for _, key in DEFINING}
    merged = {k: sorted(v.values(), key=sort_key) for k, v in values.items()}
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
