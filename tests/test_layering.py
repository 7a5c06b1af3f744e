"""The import layering of ARCHITECTURE.md, read from the source: log/ imports
nothing else of durakv; shards/ builds on log/; snapshotter/ on log/ and shards/;
server/ on all three. Nothing imports upward, and no two modules import each
other at load time. Every import counts: at module level, inside a function,
under TYPE_CHECKING, and importlib.import_module("durakv....") with a literal."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lower layers first: a module may import its own layer and those before it.
LAYERS = ("log", "shards", "snapshotter", "server")

# Known upward imports, each to be removed with the code that needs it. An entry
# that no longer occurs fails the test, so the list only shrinks.
ALLOWED_UPWARD: set[tuple[str, str]] = set()  # none: keep it so


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["durakv", *parts])


def imported_modules(tree: ast.AST, package: str) -> list[tuple[str, bool]]:
    """(module imported, whether at load time) for every durakv import in tree.
    Load time: a statement at module level, outside `if TYPE_CHECKING:`."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, load_time: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_load_time = load_time and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                child_load_time = False
            if isinstance(child, ast.Import):
                found.extend((alias.name, load_time) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                # `from durakv.shards import failure` imports the module durakv.shards.failure.
                found.extend((f"{base}.{alias.name}", load_time) for alias in child.names)
            elif (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                  and child.func.attr == "import_module" and child.args
                  and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)):
                found.append((child.args[0].value, False))
            visit(child, child_load_time)

    visit(tree, True)
    return [(name, load_time) for name, load_time in found if name.split(".")[0] == "durakv"]


def import_graph(root: Path) -> dict[str, list[tuple[str, bool]]]:
    """Every module of the layered folders under root and what it imports."""
    graph = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            name = module_name(root, path)
            package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
            graph[name] = imported_modules(ast.parse(path.read_text(), str(path)), package)
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(graph: dict[str, list[tuple[str, bool]]]) -> set[tuple[str, str]]:
    """(importer, imported module) pairs where the imported one is in a higher layer.
    `from durakv.snapshotter.rdb import x` counts as importing durakv.snapshotter.rdb."""
    found = set()
    for module, imports in graph.items():
        own = layer_of(module)
        for target, _load_time in imports:
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                found.add((module, _as_module(graph, target)))
    return found


def _as_module(graph: dict, target: str) -> str:
    """The module a `from package.module import name` names (drops the name)."""
    return target if target in graph or "." not in target else (
        target.rsplit(".", 1)[0] if target.rsplit(".", 1)[0] in graph else target)


def load_time_cycles(graph: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """Cycles among module-level imports (each reported once, from its first module)."""
    edges = {m: sorted({_as_module(graph, t) for t, load_time in imports if load_time} & graph.keys() - {m})
             for m, imports in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in edges[m]:
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                walk(n)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            walk(m)
    return cycles


def test_no_layer_imports_a_higher_one():
    upward = upward_imports(import_graph(ROOT))
    assert upward - ALLOWED_UPWARD == set(), "imports up the layers (see ARCHITECTURE.md)"
    stale = ALLOWED_UPWARD - upward
    assert not stale, f"no longer imported: remove from ALLOWED_UPWARD: {sorted(stale)}"


def test_log_imports_nothing_else_of_durakv():
    graph = import_graph(ROOT)
    outside = {(m, t) for m, imports in graph.items() if layer_of(m) == 0
               for t, _ in imports if layer_of(t) != 0}
    assert outside == set()


def test_no_import_cycles_at_load_time():
    assert load_time_cycles(import_graph(ROOT)) == []


def test_the_checks_see_upward_imports_and_cycles(tmp_path):
    """The checks above find what they look for: an upward import in a function,
    one under TYPE_CHECKING, a relative one, one through importlib, and a cycle."""
    files = {
        "log/__init__.py": "",
        "log/a.py": "def f():\n    import durakv.shards.x\n",
        "shards/__init__.py": "",
        "shards/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from durakv.server.s import S\n",
        "shards/y.py": "from ..snapshotter import z\n",
        "shards/p.py": "from durakv.shards import q\n",
        "shards/q.py": "import durakv.shards.p\n",
        "snapshotter/__init__.py": "",
        "snapshotter/z.py": "import importlib\nimportlib.import_module('durakv.server.s')\n",
        "server/__init__.py": "",
        "server/s.py": "import durakv.log.a\nfrom durakv.snapshotter import z\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == {
        ("durakv.log.a", "durakv.shards.x"),
        ("durakv.shards.x", "durakv.server.s"),
        ("durakv.shards.y", "durakv.snapshotter.z"),
        ("durakv.snapshotter.z", "durakv.server.s"),
    }
    assert load_time_cycles(graph) == [["durakv.shards.p", "durakv.shards.q", "durakv.shards.p"]]
