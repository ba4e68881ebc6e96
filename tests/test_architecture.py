"""The package's layout keeps its promises: no import cycles between its modules, and no import of
cascade_kd placed inside a function to dodge one (the command line's lazy imports excepted: they keep
`cascade-kd --help` from loading torch)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cascade_kd"
LAZY_ON_PURPOSE = {"cascade_kd.cli.app"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported at module level, modules imported inside functions) of one file, as far as
    they are cascade_kd modules; `from cascade_kd.x import y` counts y when y is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, inner = set(), set()
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}

    def targets(node) -> set[str]:
        if isinstance(node, ast.Import):
            return {a.name for a in node.names if a.name.startswith("cascade_kd")}
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cascade_kd"):
            found = {node.module}
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            return found
        return set()

    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    in_function = {id(n) for f in functions for n in ast.walk(f)}
    type_checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        (inner if id(node) in in_function else top).update(targets(node))
    return top, inner


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        top, _ = _imports(path)
        name = _module_name(path)
        graph[name] = {t for t in top if t != name}
    return graph


def test_no_module_of_the_package_imports_itself_back_in_a_cycle():
    graph = _graph()
    # a module's import also runs its packages' __init__: count those edges too
    for name in list(graph):
        graph[name] |= {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)} - {name}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                if not _through_package_init(cycle):
                    cycles.append(cycle)
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _through_package_init(cycle: list[str]) -> bool:
    """A package's __init__ importing its own submodules, which import siblings through the package,
    is how Python packages work, not a cycle between modules: skip cycles whose only way back is an
    edge from a module to one of its parent packages."""
    return any(b != a and a.startswith(b + ".") for a, b in zip(cycle, cycle[1:]))


def test_no_import_of_the_package_hides_inside_a_function():
    hidden = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        _, inner = _imports(path)
        if inner and name not in LAZY_ON_PURPOSE:
            hidden[name] = sorted(inner)
    assert not hidden, f"imports inside functions: {hidden}"
