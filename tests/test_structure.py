"""The package's shape is part of its contract: layers import downwards only, no import cycles, the
library imports without the runner's dependencies, and modules and functions stay readable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mlfsnn

PKG = Path(mlfsnn.__file__).parent

# Which top-level parts of mlfsnn each part may import (besides itself, mlfsnn.errors and
# mlfsnn.files, the bottom layer every writer uses).
ALLOWED = {
    "kernels": set(),
    "nn": {"kernels"},
    "data": set(),
    "report": set(),
    "bench": {"nn", "kernels"},
    "runner": {"nn", "kernels", "data"},
    "cli": {"runner", "report", "bench", "data", "nn", "kernels"},
}
SOURCE_SUFFIXES = (".py", ".md", ".yaml", ".sh", ".c", ".csv")
RUNNER_DEPS = ("hydra", "omegaconf", "wandb", "tonic", "matplotlib", "torchvision", "sklearn")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = ["mlfsnn", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """mlfsnn modules imported by ``name`` at module level or inside functions (relative resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
            targets = subs or [mod]  # `from . import x` imports the submodule x, not the package
        else:
            continue
        # An ancestor package runs before any of its modules anyway; importing from it is no cycle.
        found |= {t for t in targets if t in MODULES and t != name and not name.startswith(t + ".")}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_downwards_only() -> None:
    wrong = []
    for name, deps in GRAPH.items():
        part = _part(name)
        if part not in ALLOWED:
            continue
        for dep in deps:
            other = _part(dep)
            if other not in ("", "errors", "files", part) and other not in ALLOWED[part]:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in GRAPH[node]:
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError(" -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in GRAPH:
        if node not in state:
            visit(node)


def test_library_import_does_not_load_runner_dependencies() -> None:
    code = (
        "import sys, mlfsnn, mlfsnn.nn, mlfsnn.kernels\n"
        f"print(','.join(m for m in {RUNNER_DEPS!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import mlfsnn loaded {out.stdout.strip()}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name: str) -> None:
    path = MODULES[name]
    lines = path.read_text().count("\n")
    assert lines <= 450, f"{path.relative_to(PKG)} has {lines} lines: split it by concern"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{name}.{node.name} is {length} lines long"


def test_no_reference_to_documents_outside_the_repository() -> None:
    root = PKG.parents[1]
    hits = []
    for folder in ("src", "configs", "docs", "tests", "scripts"):
        for path in (root / folder).rglob("*"):
            text = path.read_text(errors="replace") if path.suffix in SOURCE_SUFFIXES else ""
            if path.is_file() and "paper-" + "notes" in text:
                hits.append(str(path.relative_to(root)))
    readme = root / "README.md"
    if "paper-" + "notes" in readme.read_text():
        hits.append("README.md")
    assert not hits, hits
