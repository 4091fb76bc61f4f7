"""The package's shape: no import cycle between kdet modules, small modules and functions, a light command line.

Read from the source (``ast``), so these run in a second; an import inside a
function counts as an import (a lazy cycle is still a cycle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from tests.paths import ROOT

KDET = ROOT / "kdet"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in KDET.rglob("*.py"):
        parts = path.relative_to(KDET.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """kdet modules ``tree`` imports; ``from package import submodule`` is an import of the submodule only."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
            found |= subs
            if len(subs) < len(node.names) and node.module in modules:
                found.add(node.module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_kdet_modules():
    modules = _modules()
    graph = {name: _imports(ast.parse(path.read_text()), modules) - {name} for name, path in modules.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(KDET.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(KDET.parent)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(KDET.parent)}:{node.lineno} {node.name}: {length} lines")
    assert too_long == [], "split these (docstrings count)"


def test_the_command_line_parser_imports_no_tensorflow():
    """``kdet --help`` builds the whole parser: it must not pay for TensorFlow (tens of seconds on a cold disk)."""
    code = ("import sys, kdet, kdet.cli; kdet.cli.build_parser(); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_public_api_names_resolve():
    import kdet

    for name in kdet.__all__:
        assert getattr(kdet, name) is not None, name
    assert kdet.load_model.__name__ == "load_model_dir" and kdet.RetinaNet.__name__ == "RetinaNet"
