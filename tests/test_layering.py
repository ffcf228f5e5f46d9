"""Layering, enforced: deploy-time code never imports build-time code, and no cycle crosses folders.

Read statically from the source (``ast``), so a lazy import inside a function
counts as much as one at the top, and so does a module named in a string to
``importlib.import_module`` or ``__import__``. The only doors from ``edgeseg``
into ``converters`` and ``calibration`` are the composition roots
(:data:`DOORS`): ``edgeseg/_lazy.py`` (the lazy entry points: ``edgeseg.build``,
the default engine builder, the PyTorch parity reference) and the CLI.
The checks run on the repository and on a copy with a planted violation,
which they must catch.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edgeseg", "converters", "calibration")
BUILD_TIME = ("converters", "calibration")
DOORS = ("edgeseg/_lazy.py", "edgeseg/cli.py")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a file: statements anywhere, and module names given
    as string literals to ``importlib.import_module`` / ``__import__``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package upwards
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def sources(root: Path) -> dict[str, Path]:
    return {
        module_name(root, path): path
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }


def upward_imports(root: Path) -> list[str]:
    """``edgeseg/...py:LINE imports converters...`` for every deploy-time import of build-time code."""
    found = []
    for name, path in sources(root).items():
        relative = path.relative_to(root).as_posix()
        if not name.startswith("edgeseg") or relative in DOORS:
            continue
        for line, target in imports(path, name):
            if target.split(".")[0] in BUILD_TIME:
                found.append(f"{relative}:{line} imports {target}")
    return sorted(set(found))


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports (doors left out: they are lazy by design)."""
    modules = sources(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        if path.relative_to(root).as_posix() in DOORS:
            continue
        for _, target in imports(path, name):
            while target and target not in modules:  # from pkg.mod import name -> pkg.mod
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def folder(root: Path, name: str, modules: dict[str, Path]) -> str:
    return modules[name].parent.relative_to(root).as_posix()


def cycles_across_folders(root: Path) -> list[list[str]]:
    """Strongly connected groups of modules (Tarjan) that span more than one folder."""
    graph = import_graph(root)
    modules = sources(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len({folder(root, m, modules) for m in group}) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_deploy_time_code_imports_no_build_time_code() -> None:
    assert upward_imports(REPO) == []


def test_no_import_cycle_crosses_folders() -> None:
    assert cycles_across_folders(REPO) == []


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "src"))
    return root


def test_the_checks_catch_planted_violations(planted: Path) -> None:
    assert upward_imports(planted) == [] and cycles_across_folders(planted) == []
    runtime = planted / "edgeseg" / "runtime"
    (runtime / "planted_static.py").write_text("def f():\n    from converters.build import build\n")
    (runtime / "planted_dynamic.py").write_text(
        "import importlib\nsets = importlib.import_module('calibration.sets')\n"
    )
    assert upward_imports(planted) == [
        "edgeseg/runtime/planted_dynamic.py:2 imports calibration.sets",
        "edgeseg/runtime/planted_static.py:2 imports converters.build",
        "edgeseg/runtime/planted_static.py:2 imports converters.build.build",
    ]
    # a cycle: the backend importing the builder, which imports the backend
    backend = planted / "edgeseg" / "runtime" / "backends" / "tensorrt.py"
    backend.write_text(backend.read_text() + "\nfrom converters.tensorrt import add_engine\n")
    groups = cycles_across_folders(planted)
    assert any(
        "converters.tensorrt" in g and "edgeseg.runtime.backends.tensorrt" in g for g in groups
    ), groups
