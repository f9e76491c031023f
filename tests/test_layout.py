"""The package stays readable: no module over 500 lines, no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sharpcomp"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_modules_and_functions_are_short():
    assert len(modules()) > 20  # the walk finds the package
    long_modules = {str(p.relative_to(PACKAGE)): n for p in modules()
                    if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    long_functions = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long_functions[f"{path.relative_to(PACKAGE)}:{node.name}"] = node.end_lineno - start + 1
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_the_limits_are_enforced():
    """The measurement itself: a function of 81 lines is found."""
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    node = ast.parse(f"def f():\n{body}\n").body[0]
    assert node.end_lineno - node.lineno + 1 == MAX_FUNCTION_LINES + 1
