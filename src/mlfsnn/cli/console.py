"""What snn-train shows on the console around a run: the resolved config as a tree at start, and the
run directory's summary line at the end.

The tree (rich) goes to stderr on rank 0 when ``print_config`` is ``true``, or ``auto`` (the default)
and stderr is a terminal: logs, pipes and test output stay free of it. Neither imports torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

__all__ = ["config_tree", "print_config_tree", "summary_line", "wants_tree"]


class _Dumper(yaml.SafeDumper):
    """Blocks for mappings, one line for lists (``widths: [16, 32, 64]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def wants_tree(cfg: DictConfig) -> bool:
    """``print_config``: ``true``, ``false`` or ``auto`` (only when stderr is a terminal)."""
    setting = cfg.get("print_config", "auto")
    return setting is True or (setting == "auto" and sys.stderr.isatty())


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that fails is reported by the run's validation
        out = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(out, dict)
    return out


def config_tree(cfg: DictConfig, choices: Mapping[str, Any]) -> Any:
    """A ``rich.tree.Tree`` of the resolved config: the chosen options, then one branch per group
    (its YAML, highlighted), then the top-level keys."""
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("[bold]config[/]", guide_style="dim")
    picked = [f"{k}={v}" for k, v in choices.items() if v is not None and not str(k).startswith("hydra")]
    if picked:
        tree.add("[bold]chosen[/]: " + " ".join(picked))
    resolved = _resolved(cfg)
    for key, value in resolved.items():
        if isinstance(value, dict) and value:
            text = yaml.dump(value, Dumper=_Dumper, sort_keys=False, width=1000).rstrip()
            tree.add(f"[bold]{key}[/]").add(Syntax(text, "yaml", background_color="default", word_wrap=True))
    for key, value in resolved.items():
        if not (isinstance(value, dict) and value):
            shown = value if isinstance(value, str) else json.dumps(value)
            tree.add(f"[bold]{key}[/]: {shown}")
    return tree


def print_config_tree(cfg: DictConfig, choices: Mapping[str, Any]) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(config_tree(cfg, choices))


def summary_line(run_dir: Path, summary: Mapping[str, Any], names: tuple[str, ...]) -> str:
    """``run directory: <dir> (best test acc ..., <status>; <what it holds>)`` for the end of a run.

    ``names`` are the files and folders a run may leave (rundir.RUN_FILES); the ones present are
    listed, folders with a slash.
    """
    parts = []
    best = summary.get("best_test_acc")
    if isinstance(best, (int, float)) and best >= 0:
        parts.append(f"best test acc {best:.2f}% (epoch {summary.get('best_epoch')})")
    if isinstance(summary.get("best_val_acc"), (int, float)):
        parts.append(f"best val acc {summary['best_val_acc']:.2f}%")
    done, wall = summary.get("epochs_completed"), summary.get("wall_time_s")
    if done is not None:
        parts.append(f"{done} epoch(s)" + (f" in {wall:.0f} s" if isinstance(wall, (int, float)) else ""))
    if summary.get("status") not in (None, "ok"):
        parts.append(f"status {summary['status']}")
    held = [
        n + ("/" if (run_dir / n).is_dir() else "")
        for n in names
        if (run_dir / n).is_file() or ((run_dir / n).is_dir() and any((run_dir / n).iterdir()))
    ]
    if held:
        parts.append("holds " + ", ".join(held))
    return f"run directory: {run_dir}" + (f" ({'; '.join(parts)})" if parts else "")
