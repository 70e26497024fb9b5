"""The tree a newcomer reads: files short enough to read in one sitting, imports at the top of each
module (the dependency graph is visible) and no cycle between the project's modules."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGES = ("lightning_modules", "datamodules")
FILES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(tree: ast.AST, top_level: bool) -> list[str]:
    """The project modules a file imports, at module level or (``top_level`` False) inside functions."""
    nodes = (
        tree.body
        if top_level
        else [
            n
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f)
        ]
    )
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found += [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
    return found


def test_every_file_reads_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in FILES if (n := len(p.read_text().splitlines())) > 425}
    assert not long, long


def test_project_imports_sit_at_the_top_of_each_module():
    inside = {module_name(p): project_imports(ast.parse(p.read_text()), top_level=False) for p in FILES}
    assert not {k: v for k, v in inside.items() if v}


def test_no_import_cycle():
    modules = {module_name(p) for p in FILES}
    graph = {}
    for path in FILES:
        targets = project_imports(ast.parse(path.read_text()), top_level=True)
        graph[module_name(path)] = {t for t in targets if t in modules and t != module_name(path)}
    # a package's __init__ importing its own submodules is not a cycle of the code's layers
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + "."):
                continue
            assert state.get(nxt) != 1, " -> ".join([*stack, node, nxt])
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
