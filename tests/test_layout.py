"""The package stays readable and layered: no module over 500 lines, no function over 80 lines; imports
run one way (commands above engine/ and figures/, figures/ without torch, no circles)."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------
# layering: who may import whom

ROOT = PACKAGE.name
# the layers below the command line: none of them imports the commands or the command line
BELOW_COMMANDS = ("engine", "figures", "results", "measures", "data", "settings", "models")


@dataclass(frozen=True)
class Import:
    """One import of a module of the package by another: where it stands and what it names."""

    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (``from a.b import c`` names a.b.c when that is a module)
    line: int
    top: bool  # run when the module loads: at module level, outside ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in modules()}


def _resolve(name: str, source: str, level: int, is_package: bool) -> str:
    if level:  # a relative import: from the package of the importing module
        base = source.split(".")[: len(source.split(".")) - level + (1 if is_package else 0)]
        name = ".".join(base + ([name] if name else []))
    return name


def _named(node: ast.AST, source: str, is_package: bool) -> list[str]:
    """The modules an import statement (or an ``importlib.import_module("...")`` call) names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(node.module or "", source, node.level, is_package)
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")):
        return [node.args[0].value]
    return []


def _walk(node: ast.AST, top: bool):
    """Every node under ``node``, with whether it runs when the module loads."""
    for child in ast.iter_child_nodes(node):
        deferred = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
            isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
        yield child, top
        yield from _walk(child, top and not deferred)


def imports_in(tree: ast.AST, source: str, is_package: bool = False) -> list[Import]:
    found = []
    for node, top in _walk(tree, True):
        for target in _named(node, source, is_package):
            found.append(Import(source, target, node.lineno, top and not isinstance(node, ast.Call)))
    return found


def imports_of(source: str) -> list[Import]:
    path = MODULES[source]
    return imports_in(ast.parse(path.read_text()), source, path.name == "__init__.py")


ALL_IMPORTS = [imp for source in MODULES for imp in imports_of(source)]


def _in(module: str, *names: str) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def test_the_import_walk_sees_every_kind_of_import():
    """The walk itself: module-level, function-level, TYPE_CHECKING, relative and dynamic imports."""
    assert len(MODULES) > 20 and f"{ROOT}.cli" in MODULES
    by_source = {}
    for imp in ALL_IMPORTS:
        by_source.setdefault(imp.source, []).append(imp)
    cli = {(i.target, i.top) for i in by_source[f"{ROOT}.cli"]}
    assert (f"{ROOT}.settings", True) in cli and (f"{ROOT}.engine.train", False) in cli
    code = ("import a\nfrom . import x\nfrom .y import z\nif TYPE_CHECKING:\n    import b\n"
            "def f():\n    import c\n    importlib.import_module('d.e')\n")
    found = [(i.target, i.top) for i in imports_in(ast.parse(code), f"{ROOT}.results.records")]
    assert found == [("a", True), (f"{ROOT}.results", True), (f"{ROOT}.results.y", True), ("b", False),
                     ("c", False), ("d.e", False)]


def test_nothing_below_the_commands_imports_them():
    """engine/, figures/, results/, measures/, data/, settings and models never import the commands
    (``sharpcomp.commands``) or the command line (``sharpcomp.cli``), in any place."""
    below = [f"{ROOT}.{name}" for name in BELOW_COMMANDS]
    bad = [imp for imp in ALL_IMPORTS
           if _in(imp.source, *below) and _in(imp.target, f"{ROOT}.commands", f"{ROOT}.cli")]
    assert not bad, bad


def test_figures_import_neither_torch_nor_the_engine_nor_the_measures():
    bad = [imp for imp in ALL_IMPORTS if _in(imp.source, f"{ROOT}.figures")
           and _in(imp.target, "torch", f"{ROOT}.engine", f"{ROOT}.measures")]
    assert not bad, bad


def test_figures_load_no_torch():
    """Every module of figures/, imported in a fresh interpreter, leaves torch unloaded."""
    names = sorted(m for m in MODULES if _in(m, f"{ROOT}.figures"))
    code = f"import sys\nfor m in {names!r}:\n    __import__(m)\nprint('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["False"], names


def test_the_command_line_starts_without_torch():
    """``sharpcomp --help`` (it composes the config) and ``--version`` load neither torch, pandas nor matplotlib:
    the imports that remain inside functions are the ones that keep it so."""
    code = ("import contextlib, io, sys\nfrom sharpcomp.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    codes = [main(['--help']), main(['--version'])]\n"
            "print(codes, [m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n")[0] == "[0, 0] []"


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A circle of the directed graph ``edges`` (as a path that ends where it starts), or None: a DFS."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_search_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_circles_among_module_level_imports():
    """Importing a module runs its module-level imports, and those of the packages it sits in: no module
    reaches itself that way."""
    edges: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        if not imp.top or not _in(imp.target, ROOT):
            continue
        parts = imp.target.split(".")
        targets = {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(MODULES)
        edges.setdefault(imp.source, set()).update(targets - {imp.source})
    assert sum(map(len, edges.values())) > 100  # the graph is the package's
    assert cycle(edges) is None, " -> ".join(cycle(edges))


def test_settings_do_not_import_the_measures():
    """The settings read the measures' declarations as plain data (``measure_index``), never their code."""
    plain = (f"{ROOT}.settings", f"{ROOT}.measure_index", f"{ROOT}.results.columns")
    bad = [imp for imp in ALL_IMPORTS if imp.source in plain and _in(imp.target, f"{ROOT}.measures")]
    assert not bad, bad
