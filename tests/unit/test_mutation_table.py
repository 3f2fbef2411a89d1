"""The mutation table (tests/mutation/table.py) still points at today's code.

The full mutation check runs each bug against its tests and takes minutes (see
RELIABILITY.md); these checks take a second and fail as soon as a refactor moves code a
mutation edits, or renames a test a mutation names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tests.mutation.run import ROOT, PatternError, apply_edits
from tests.mutation.table import MUTATIONS, Edit, Mutation


def test_names_are_unique_and_every_mutation_names_tests() -> None:
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))
    assert all(m.tests and m.edits for m in MUTATIONS)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_every_edit_applies_exactly_once_and_yields_valid_python(
    mutation: Mutation, tmp_path: Path
) -> None:
    for edit in mutation.edits:
        target = tmp_path / edit.path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((ROOT / edit.path).read_bytes())
    apply_edits(tmp_path, mutation.edits)
    for path in {e.path for e in mutation.edits}:
        mutated = (tmp_path / path).read_text(encoding="utf-8")
        assert mutated != (ROOT / path).read_text(encoding="utf-8")
        ast.parse(mutated, filename=path)  # a bug, not a syntax error


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_named_tests_exist(mutation: Mutation) -> None:
    for node in mutation.tests:
        file, _, name = node.partition("::")
        path = ROOT / file
        assert path.is_file(), node
        if name:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef)}
            defined |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name.split("[")[0] in defined, node


def test_a_moved_or_repeated_snippet_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\ny = 1\n", encoding="utf-8")
    with pytest.raises(PatternError, match="PATTERN NOT FOUND"):
        apply_edits(tmp_path, [Edit("m.py", "z = 1\n", "z = 2\n")])
    with pytest.raises(PatternError, match="PATTERN AMBIGUOUS"):
        apply_edits(tmp_path, [Edit("m.py", " = 1\n", " = 2\n")])
    with pytest.raises(PatternError, match="PATTERN NOT FOUND: no file"):
        apply_edits(tmp_path, [Edit("gone.py", "x", "y")])
