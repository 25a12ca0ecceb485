"""The package's import graph: no cycle, no import of a quantext module inside a
function, and ``import quantext`` without onnx / onnxruntime.

Every module under python/quantext is parsed (not imported). A module depends on
each quantext module it imports, wherever the import statement stands (inside
functions too), and on the packages it must initialize to get there: importing
``quantext.calibration.ranges`` from ``quantext.nn.quantizer`` runs
``quantext/calibration/__init__.py`` first, but not ``quantext/__init__.py``,
which is already running.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import quantext.calibration as calibration
import quantext.histogram_observer as histogram_observer
import quantext.observers as observers

PACKAGE = "quantext"
ROOT = Path(__file__).resolve().parents[2] / "python" / PACKAGE


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, level: int, module: str | None) -> str:
    """The absolute name that ``from <level dots><module> import ...`` in ``importer`` names."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if _is_package(importer) else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imported(importer: str, node: ast.AST) -> list[str]:
    """The quantext modules an import statement loads (a ``from`` import of a
    submodule loads that submodule; of a name, the module holding it)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        target = _resolve(importer, node.level, node.module)
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
    return [n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _dependencies(importer: str, target: str) -> set[str]:
    """``target`` and the packages above it that are not already initializing around ``importer``."""
    running = set(_ancestors(importer)) | {importer}
    deps = {a for a in _ancestors(target) if a not in running}
    if target in MODULES and target not in running:
        deps.add(target)
    return deps


class _Scan(ast.NodeVisitor):
    def __init__(self, name: str) -> None:
        self.name, self.depth = name, 0
        self.deps: set[str] = set()
        self.in_function: list[str] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        targets = _imported(self.name, node)
        for target in targets:
            self.deps |= _dependencies(self.name, target)
        if targets and self.depth:
            self.in_function.append(f"{self.name}:{node.lineno} imports {', '.join(targets)} inside a function")

    visit_Import = visit_ImportFrom = _import


def _scan() -> dict[str, _Scan]:
    scans = {}
    for name, path in MODULES.items():
        scan = _Scan(name)
        scan.visit(ast.parse(path.read_text(), filename=str(path)))
        scans[name] = scan
    return scans


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_scan_sees_the_package():
    scans = _scan()
    assert {"quantext.calibration", "quantext.calibration.ranges", "quantext.nn.quantizer"} <= set(scans)
    assert "quantext.calibration" in scans["quantext.nn.quantizer"].deps
    assert "quantext.schemes" in scans["quantext.calibration.ranges"].deps


def test_no_import_cycle():
    graph = {name: scan.deps for name, scan in _scan().items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_function_level_import_of_quantext_modules():
    found = [line for scan in _scan().values() for line in scan.in_function]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("statement,absent", [
    ("import quantext", ("onnx", "onnxruntime", "onnxscript")),
    ("import quantext.export", ("onnxruntime",)),
])
def test_import_does_not_load(statement, absent):
    code = f"import sys; {statement}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_export_loads_on_first_use():
    code = ("import sys, quantext as qx; assert 'onnx' not in sys.modules; f = qx.export_onnx; "
            "import quantext.export as e; assert f is e.export_onnx and qx.export is e and 'onnx' in sys.modules; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stdout + out.stderr


def test_former_module_paths_still_import():
    assert histogram_observer.HistogramObserver is calibration.HistogramObserver
    assert observers.MinMaxObserver is calibration.MinMaxObserver
    assert observers.make_observer is calibration.make_observer
    assert calibration.compute_clip.__module__ == "quantext.calibration.clip"
