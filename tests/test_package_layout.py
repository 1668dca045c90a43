"""The shape of the package: no import cycle, and no module too long to read.

Imports are read with `ast`, nothing is imported. An edge A -> B is an `import` or `from ... import`
in A naming B, the most specific saescope module it names: `from saescope.saes import base` and
`from saescope.saes.base import SAE` are both edges to saescope.saes.base. Module-level imports count
(also inside a top-level `try` or `if`), and so do deferred ones inside functions: a deferred import
is how the saes/base <-> release/skip_transcoder cycle hid. An import under `if TYPE_CHECKING:` is
only a type and never runs, so it does not count; neither does a package's __init__ running when one
of its submodules is imported (that is Python's order, not a cycle of ours).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "saescope"
MAX_LINES = 420


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement under `node` that can run: all but those under `if TYPE_CHECKING:`."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [node]
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        return [i for child in node.orelse for i in _imports(child)]
    return [i for child in ast.iter_child_nodes(node) for i in _imports(child)]


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The saescope modules that module `name` imports, at module level or deferred."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in _imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        out |= {t for t in targets if t in known and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_reader_sees_the_package_and_its_edges():
    graph = import_graph()
    assert len(graph) > 50
    assert "saescope.saes.base" in graph["saescope.saes.jumprelu"]
    assert "saescope.saes.skip_transcoder" in graph["saescope.saes.base"]
    # an import under `if TYPE_CHECKING:` is only a type, never run; a deferred one runs
    assert "saescope.saes.base" not in graph["saescope.saes.skip_transcoder"]
    assert "saescope.release.formats" in graph["saescope.evaluate.metrics"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_no_module_is_too_long_to_read():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by idea): {long}"
