"""The shape of the code, checked on its syntax trees (no imports of the checked modules).

* §10 messages are built and read only in ``ionn_net.messages``: nowhere else in ``src/``
  or ``bench/`` does a dict spell ``"m"``, or code read ``"m"`` or a message member from
  a head (``head.get("code")``, ``reply["offset"]``...). ``ionn_net.proto`` is exempt: it
  enforces the envelope below every message type (§4.2: a head is a JSON object with a
  string ``"m"``; §10.1.2: ``body_len``).
* No module of ``src/`` imports another's private name (``from x import _y``) or reaches
  into one (``x._y`` on an imported module or class).
* No import cycle inside ``ionn_net.aio`` (any import counts, ``TYPE_CHECKING`` ones too:
  a cycle there is a design dependency, whether or not it breaks at import time).
* The client package stays in small parts: no class over 400 lines, no module over 800,
  no function over 60; and every attribute a client class sets is set in its ``__init__``
  (none appears later, in a method of one loop or a worker thread's callback).

Each checker is also run on a snippet that breaks its rule, so that a checker that
silently stopped finding anything fails here too.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ionn_net import messages

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "ionn_net"
BENCH = ROOT / "bench"

#: Modules allowed to spell message members: the messages package, and the envelope
#: checks of the sans-I/O core (§4.2, §10.1.2).
MESSAGE_MODULES = (SRC / "messages", SRC / "proto")
#: Names that conventionally hold a message head.
HEAD_NAMES = frozenset(
    {
        "head",
        "reply",
        "held",
        "hello",
        "welcome",
        "challenge",
        "answer",
        "response",
        "resp",
        "msg",
        "message",
        "request",
        "req",
    }
)
CLIENT = SRC / "client"
MAX_CLASS_LINES = 400
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 60


def _message_members() -> frozenset[str]:
    """Every member name of a message the messages package defines, and ``"m"``."""
    classes = [*messages.REQUESTS.values(), *messages.REPLIES.values(), messages.Holdings]
    classes += [messages.ProbeQuery, messages.ProbeResult, messages.ProbeUpload]
    classes += [messages.ProbeUploadOk]
    names = {f.name for cls in classes for f in dataclasses.fields(cls)}
    return frozenset(names - {"holdings"}) | {"m"}


MEMBERS = _message_members()


def _python_files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        yield from sorted(root.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_member(node: ast.AST | None, *, only_m: bool = False) -> bool:
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return False
    return node.value == "m" if only_m else node.value in MEMBERS


def _holds_head(node: ast.AST) -> bool:
    """``head``, ``reply``... or ``<anything>.head``."""
    if isinstance(node, ast.Name):
        return node.id in HEAD_NAMES
    return isinstance(node, ast.Attribute) and (node.attr == "head" or node.attr in HEAD_NAMES)


def message_violations(tree: ast.AST) -> list[str]:
    """Heads built or read outside the messages package: ``{"m": ...}``,
    ``dict(m=...)``, ``x.get("m")``, and ``head.get(member)`` / ``head[member]`` on a
    name that holds a head (``"m"`` included)."""
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Dict) and any(_is_member(k, only_m=True) for k in node.keys):
            found.append(f"line {line}: a dict with an 'm' key")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get" and node.args:
                key = node.args[0]
                if _is_member(key, only_m=True) or (
                    _is_member(key) and _holds_head(node.func.value)
                ):
                    found.append(f"line {line}: .get({ast.unparse(key)}) of a message member")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "dict" and any(k.arg == "m" for k in node.keywords):
                found.append(f"line {line}: dict(m=...)")
        elif isinstance(node, ast.Subscript):
            key = node.slice
            if _is_member(key) and _holds_head(node.value):
                found.append(f"line {line}: [{ast.unparse(key)}] of a message member")
    return found


def _imported_names(tree: ast.AST) -> set[str]:
    """Local names bound to something imported from ionn_net (modules and members)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ionn_net"):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ionn_net"):
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_reach_violations(tree: ast.AST) -> list[str]:
    """``from ionn_net.x import _y`` and ``x._y`` where ``x`` was imported from ionn_net."""
    found = []
    imported = _imported_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ionn_net"):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def _module_name(path: Path, top: Path) -> str:
    """The dotted name of ``path`` in the top-level package directory ``top``."""
    parts = path.relative_to(top.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_cycles(package: Path, top: Path = SRC) -> list[list[str]]:
    """Cycles among the modules of ``package`` (every import statement counts)."""
    modules = {_module_name(p, top): p for p in _python_files(package)}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(_tree(path)):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[name].update(t for t in targets if t in modules and t != name)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(modules):
        if start not in state:
            visit(start, [start])
    return cycles


def size_violations(tree: ast.AST, lines: int) -> list[str]:
    """Classes over 400 lines, functions over 60, the module over 800."""
    found = []
    if lines > MAX_MODULE_LINES:
        found.append(f"module: {lines} lines")
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        assert node.end_lineno is not None
        span = node.end_lineno - node.lineno + 1
        limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
        if span > limit:
            found.append(f"{node.name} (line {node.lineno}): {span} lines")
    return found


def late_attribute_violations(tree: ast.AST) -> list[str]:
    """``self.x = ...`` in a method when ``__init__`` never sets ``self.x``."""
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        first: set[str] = set()
        later: dict[str, str] = {}
        for method in cls.body:
            if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(method):
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                    targets = [node.target]
                else:
                    continue
                for target in (e for t in targets for e in ast.walk(t)):
                    if (
                        isinstance(target, ast.Attribute)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                    ):
                        if method.name == "__init__":
                            first.add(target.attr)
                        else:
                            later.setdefault(target.attr, method.name)
        found += [f"{cls.name}.{a} first set in {m}" for a, m in later.items() if a not in first]
    return found


# -- the checks, on the code -----------------------------------------------------------


def _outside_messages() -> Iterator[Path]:
    for path in _python_files(SRC, BENCH):
        if not any(path.is_relative_to(m) for m in MESSAGE_MODULES):
            yield path


def test_messages_are_built_and_read_only_in_the_messages_package() -> None:
    found = {
        str(p.relative_to(ROOT)): v
        for p in _outside_messages()
        if (v := message_violations(_tree(p)))
    }
    assert not found, found


#: The aio stream and connection share private names; the helper that removes their
#: import cycle removes this too.
_AIO = SRC / "aio"


def test_no_module_outside_aio_imports_or_reaches_a_private_name() -> None:
    found = {
        str(p.relative_to(ROOT)): v
        for p in _python_files(SRC)
        if not p.is_relative_to(_AIO) and (v := private_reach_violations(_tree(p)))
    }
    assert not found, found


def test_no_aio_module_imports_or_reaches_a_private_name() -> None:
    found = {
        str(p.relative_to(ROOT)): v
        for p in _python_files(_AIO)
        if (v := private_reach_violations(_tree(p)))
    }
    assert not found, found


def test_no_import_cycle_inside_aio() -> None:
    assert import_cycles(_AIO) == []


def test_client_classes_set_every_attribute_in_init() -> None:
    found = {
        str(p.relative_to(ROOT)): v
        for p in _python_files(CLIENT)
        if (v := late_attribute_violations(_tree(p)))
    }
    assert not found, found


def test_client_package_parts_stay_small() -> None:
    found = {}
    for path in _python_files(CLIENT):
        text = path.read_text(encoding="utf-8")
        if violations := size_violations(ast.parse(text), len(text.splitlines())):
            found[str(path.relative_to(ROOT))] = violations
    assert not found, found


# -- each checker finds what it is for -------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        'h = {"m": "hello", "session": key}',
        'h = dict(m="hello")',
        'kind = head.get("m")',
        'kind = anything.get("m")',
        'code = reply.get("code")',
        'qid = stream.head.get("qid")',
        'ready = held["layers_ready"]',
        'ok = head["m"] == "welcome"',
    ],
)
def test_the_message_check_finds_a_head_outside_the_package(source: str) -> None:
    assert message_violations(ast.parse(source)), source


@pytest.mark.parametrize(
    "source",
    [
        'info = listening.get("cost_model")',  # not a head: a benchmark's own JSON
        'ns = self.namespaces["m"]',  # a namespace called m
        'cmd = reply.get("cmd")',  # not a message member
        "x = head.get(name)",  # not a constant
        "ok = Welcome.parse(head)",
    ],
)
def test_the_message_check_leaves_other_code_alone(source: str) -> None:
    assert not message_violations(ast.parse(source)), source


@pytest.mark.parametrize(
    "source",
    [
        "from ionn_net.aio.stream import Stream, _BaseStream",
        "from ionn_net.planner import ours\nours._polish(x)",
        "import ionn_net.executor as ex\nex._validated(s, t)",
        "from ionn_net.client.session import UploadSession\nUploadSession._emit_progress(s)",
    ],
)
def test_the_private_check_finds_a_reach_across_modules(source: str) -> None:
    assert private_reach_violations(ast.parse(source)), source


def test_the_private_check_leaves_own_privates_alone() -> None:
    source = "class A:\n    def f(self):\n        return self._x\n_y = 1\nprint(_y)"
    assert not private_reach_violations(ast.parse(source))


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "ionn_net" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from ionn_net.pkg.b import B\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ionn_net.pkg.a import A\n"
    )
    (package / "c.py").write_text("from ionn_net.pkg import a\n")
    cycles = import_cycles(package, tmp_path / "ionn_net")
    (package / "b.py").write_text("B = 1\n")
    acyclic = import_cycles(package, tmp_path / "ionn_net")
    assert cycles == [["ionn_net.pkg.a", "ionn_net.pkg.b", "ionn_net.pkg.a"]]
    assert acyclic == []


def test_the_attribute_check_finds_an_attribute_set_late() -> None:
    init = "class A:\n    def __init__(self):\n        self.a = 1\n    def f(self):\n"
    assert late_attribute_violations(ast.parse(init + "        self.b = 2\n")) == [
        "A.b first set in f"
    ]
    assert late_attribute_violations(ast.parse(init + "        self.a += 2\n")) == []


def test_the_size_check_finds_a_long_class_and_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_CLASS_LINES))
    assert size_violations(ast.parse(f"class Big:\n{body}\n"), MAX_CLASS_LINES + 1)
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert size_violations(ast.parse(f"def long():\n{body}\n"), MAX_FUNCTION_LINES + 1)
    assert size_violations(ast.parse("x = 1"), MAX_MODULE_LINES + 1)
    assert not size_violations(ast.parse("class Small:\n    x = 1\n"), 2)


# -- references a reader of the repository can follow ------------------------------------

# Notes kept outside the repository, and tracker numbers, mean nothing to a reader of a
# clone: comments cite protocol.md sections, the repository's own documents and benches.
_STALE_REFERENCE = re.compile(
    r"\b(baselines|ionn-algorithm|round2|architecture)\.md\b|protocol-lessons|security-lessons"
    r"|\bissue\s*#?\d+|\btracker\b",
    re.IGNORECASE,
)


def stale_references(text: str) -> list[str]:
    return [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), start=1)
        if _STALE_REFERENCE.search(line)
    ]


def test_no_comment_points_outside_the_repository() -> None:
    this_file = Path(__file__).resolve()
    found = [
        f"{path.relative_to(ROOT)} {hit}"
        for path in _python_files(SRC, ROOT / "tests", ROOT / "bench")
        if path.resolve() != this_file
        for hit in stale_references(path.read_text(encoding="utf-8"))
    ]
    assert not found, found


@pytest.mark.parametrize(
    "line",
    [
        "# ~100 ms p50 (baselines.md)",
        "# see protocol-lessons, head-of-line section",
        '"""One test per attack row of security-lessons.md."""',
        "# the window issue 4 reports",
        "# fixed for Issue #12",
    ],
)
def test_the_reference_check_finds_a_stale_reference(line: str) -> None:
    assert stale_references(line), line


@pytest.mark.parametrize(
    "line",
    [
        "# §14.3.1: results count against the outbound cap",
        "# measured by bench/transport.py; see RELIABILITY.md",
        "# the baselines' orders are candidates too",
    ],
)
def test_the_reference_check_leaves_repository_references_alone(line: str) -> None:
    assert not stale_references(line), line
