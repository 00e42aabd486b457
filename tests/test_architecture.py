"""The layers of docs/architecture.md, checked on the source: which package may import which, no
import cycle between modules, and no file that points outside the repository."""

from __future__ import annotations

import ast
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "backbones", "methods", "evaluation", "harness")
# package -> the packages it may import (besides itself); every import counts, also one inside a function
ALLOWED = {
    "core": set(),
    "backbones": {"core"},
    "methods": {"core", "backbones"},
    "evaluation": {"core", "backbones"},
    "harness": {"core", "backbones", "methods", "evaluation"},
}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module or module.name, line) of every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, node.lineno)] + [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target, _ in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def test_every_import_follows_the_layers():
    wrong = []
    for name, path in _modules().items():
        package = name.split(".")[0]
        for target, line in _imports(path):
            top = target.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {package} imports {target}")
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + "\n".join(sorted(set(wrong)))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_modules_import_each_other_even_through_others():
    assert _cycles(_graph()) == []


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = {".py", ".md", ".toml", ".txt", ".cfg", ".yaml", ".yml", ".sh", ""}
    return [ROOT / f for f in out.splitlines() if Path(f).suffix in suffixes and (ROOT / f).is_file()]


# paths of the developers' notes beside the checkout, which a user of vsbench does not have; joined
# from parts so that this file does not name them itself
OUTSIDE = ["/".join(("..", "shared")), "/".join(("shared", "DESIGN")), "/".join(("shared", "research")),
           "/".join(("", "work", "")), ".".join(("ANCHORS", "md")), ".".join(("METHODS", "md")), ".".join(("PERFORMANCE", "md"))]


@pytest.mark.parametrize("outside", OUTSIDE)
def test_no_file_points_outside_the_repository(outside):
    hits = [f"{path.relative_to(ROOT)}:{n}" for path in _tracked_text_files()
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if outside in line]
    assert not hits, f"{outside!r} (a path outside the repository) in: {', '.join(hits)}"
