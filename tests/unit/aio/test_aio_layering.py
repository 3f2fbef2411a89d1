"""The modules of ionn_net.aio import each other without cycles (also under TYPE_CHECKING), and
the per-stream machinery does not know the connection class: streams reach their connection only
through the StreamHost interface."""

from __future__ import annotations

import ast
from pathlib import Path

import ionn_net.aio

AIO = Path(ionn_net.aio.__file__).resolve().parent
PACKAGE = "ionn_net.aio"


def _aio_imports(path: Path) -> set[str]:
    """Modules of ionn_net.aio that ``path`` imports anywhere (TYPE_CHECKING blocks too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith(PACKAGE + "."))
    return found


def import_graph() -> dict[str, set[str]]:
    return {
        f"{PACKAGE}.{p.stem}": _aio_imports(p) for p in AIO.glob("*.py") if p.stem != "__init__"
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                cycle = visit(nxt, [*path, nxt])
                if cycle:
                    return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [start])
        if cycle:
            return cycle
    return None


def test_no_import_cycle_inside_aio() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.connection" in graph and f"{PACKAGE}.stream" in graph
    assert find_cycle(graph) is None, find_cycle(graph)


def test_stream_module_does_not_import_the_connection() -> None:
    assert f"{PACKAGE}.connection" not in import_graph()[f"{PACKAGE}.stream"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
