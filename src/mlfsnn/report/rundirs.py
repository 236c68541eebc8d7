"""Finding run directories and reading them into :class:`~.runs.Run` (for snn-report).

A run directory is any folder holding ``metrics.jsonl`` or ``summary.json``; its configuration comes
from ``summary.json`` (resolved) or, for runs that never finished, ``.hydra/config.yaml``. Damaged
files (cut short, not UTF-8, not JSON) become the run's ``problems``, listed by the report: one bad
run never stops it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .runs import Run, _natural

__all__ = ["find_run_dirs", "label_runs", "load_run"]


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


def _why(exc: BaseException) -> str:
    # UnicodeDecodeError's own text is long and names no file; RecursionError's none at all.
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def _metrics(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; an unreadable line (cut short by a crash, not UTF-8, not JSON) is
    a problem and left out, so one bad line cannot hide the others or stop the report."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"metrics.jsonl unreadable ({_why(exc)})")
        return []
    rows = []
    # Split the bytes, not decoded text: str.splitlines would also break at U+2028 and friends, which
    # JSON allows inside strings, and a bad byte stays confined to its own line.
    for i, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode())
        except UnicodeDecodeError:
            problems.append(f"metrics.jsonl line {i} unreadable (not UTF-8)")
            continue
        except (ValueError, RecursionError):
            problems.append(f"metrics.jsonl line {i} unreadable")  # e.g. cut short by a crash
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load_run(path: Path, label: str) -> Run:
    """Read one run directory; damaged files become ``problems``, never exceptions."""
    problems: list[str] = []
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_bytes().decode())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, RecursionError) as exc:
            problems.append(f"summary.json unreadable ({_why(exc)})")
            summary = None
    metrics = _metrics(path / "metrics.jsonl", problems) if (path / "metrics.jsonl").is_file() else []
    config: dict[str, Any] = {}
    if summary is not None and isinstance(summary.get("config"), dict):
        config = summary["config"]
    elif (path / ".hydra" / "config.yaml").is_file():
        from omegaconf import OmegaConf

        try:
            config = _lenient_container(OmegaConf.load(path / ".hydra" / "config.yaml"))
        except Exception as exc:  # a damaged YAML file: report the run, do not stop the report
            what = _why(exc) if isinstance(exc, UnicodeDecodeError) else type(exc).__name__
            problems.append(f".hydra/config.yaml unreadable ({what})")
    if not config:
        problems.append("no configuration (neither summary.json nor .hydra/config.yaml)")
    return Run(path, label, _flatten(config), metrics, summary, problems)


def label_runs(dirs: list[Path]) -> list[tuple[Path, str]]:
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
