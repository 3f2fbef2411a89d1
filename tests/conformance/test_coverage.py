"""Every MUST of protocol.md has a conformance test that names its section (Appendix A).

Section rule (what "the section of a MUST" means here):

* A line ``## N. Title``, ``### N.M Title`` (any heading whose first word is a dotted number)
  starts section ``N`` / ``N.M``; ``## Appendix A. ...`` starts section ``A``.
* A paragraph that starts a line with a dotted number followed by a period and a space, such as
  ``6.2.1. A receiver ...`` or ``10.1.2. A head ...``, starts section ``6.2.1`` / ``10.1.2``.
* Every other line belongs to the most recent of those two (so the text after a table in
  ``## 4. Frame types`` belongs to ``4``, a bullet under ``### 14.5`` to ``14.5``).
* A requirement is each occurrence of the capitalised word ``MUST`` (``MUST NOT`` counts once),
  found in the section's text joined into one line (so a ``MUST`` / ``NOT`` line break cannot
  split it). ``MUSTs`` (the plural noun) is not a requirement.
* The preamble and section 1 (Conventions) only define the keywords, so they are not counted.

The suite's side: every test function or class collected from ``tests/conformance/test_*.py``
(imported here) contributes one count to each distinct section named by its
``@pytest.mark.spec(section, ...)`` marks (function, class or module ``pytestmark``). A section
fails when it has more MUSTs than tests naming it; a marker naming a section that does not exist
in protocol.md also fails (it would hide a typo). Tests skipped at run time still count: skipping
is reported by pytest itself.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
PROTOCOL = HERE.parent.parent / "protocol.md"
HEADING = re.compile(r"^#{1,6}\s+(?:Appendix\s+)?([0-9]+(?:\.[0-9]+)*|[A-Z])\.?\s")
PARAGRAPH = re.compile(r"^(\d+(?:\.\d+)+)\.\s")
MUST = re.compile(r"\bMUST(?: NOT)?\b")
NOT_COUNTED = {"", "1", "1.1", "1.2", "1.3"}


def section_texts(text: str) -> dict[str, str]:
    """Section number -> its text (joined into one line), by the rule of the module docstring."""
    current = ""
    parts: dict[str, list[str]] = {"": []}
    for line in text.splitlines():
        match = HEADING.match(line) or PARAGRAPH.match(line)
        if match:
            current = match.group(1)
            parts.setdefault(current, [])
        parts[current].append(line.strip())
    return {sec: " ".join(lines) for sec, lines in parts.items()}


def must_counts(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for sec, body in section_texts(text).items():
        if sec not in NOT_COUNTED:
            n = len(MUST.findall(body))
            if n:
                counts[sec] = n
    return counts


def _marks(obj: object) -> list[pytest.Mark]:
    marks = getattr(obj, "pytestmark", [])
    return list(marks) if isinstance(marks, list) else [marks]


def _spec_sections(marks: list[pytest.Mark]) -> set[str]:
    return {str(m.args[0]) for m in marks if m.name == "spec" and m.args}


def spec_tests(modules: list[ModuleType]) -> dict[str, set[str]]:
    """Section -> names of the tests (functions, or methods of test classes) marked for it."""
    found: dict[str, set[str]] = {}

    def add(secs: set[str], name: str) -> None:
        for sec in secs:
            found.setdefault(sec, set()).add(name)

    for module in modules:
        module_secs = _spec_sections(_marks(module))
        for name, obj in vars(module).items():
            if name.startswith("test_") and inspect.isfunction(obj):
                if obj.__module__ == module.__name__:  # imported helpers are not tests here
                    add(module_secs | _spec_sections(_marks(obj)), f"{module.__name__}.{name}")
            elif name.startswith("Test") and inspect.isclass(obj):
                class_secs = module_secs | _spec_sections(_marks(obj))
                methods = [m for m in dir(obj) if m.startswith("test") or m == "runTest"]
                for meth in methods:
                    secs = class_secs | _spec_sections(_marks(getattr(obj, meth)))
                    add(secs, f"{module.__name__}.{name}.{meth}")
    return found


def conformance_modules() -> list[ModuleType]:
    names = sorted(p.stem for p in HERE.glob("test_*.py") if p.stem != "test_coverage")
    return [importlib.import_module(f"tests.conformance.{n}") for n in names]


def uncovered(counts: Counter[str], tests: dict[str, set[str]]) -> dict[str, tuple[int, int]]:
    return {
        sec: (n, len(tests.get(sec, ())))
        for sec, n in sorted(counts.items())
        if len(tests.get(sec, ())) < n
    }


@pytest.mark.spec("A")
def test_every_must_has_enough_tests_naming_its_section() -> None:
    counts = must_counts(PROTOCOL.read_text(encoding="utf-8"))
    assert sum(counts.values()) > 50, "the MUST parser found implausibly few requirements"
    tests = spec_tests(conformance_modules())
    missing = uncovered(counts, tests)
    assert not missing, "section: (MUSTs, tests naming it) -> " + repr(missing)


@pytest.mark.spec("A")
def test_every_spec_marker_names_a_real_section() -> None:
    sections = set(section_texts(PROTOCOL.read_text(encoding="utf-8")))
    named = set(spec_tests(conformance_modules()))
    assert named - sections == set()


def test_section_rule_on_a_sample() -> None:
    sample = "\n".join(
        [
            "# Title: tests MUST exist",
            "## 1. Conventions",
            "The key words MUST and MUST NOT ...",
            "## 4. Frame types",
            "| table |",
            "A frame MUST be checked; it MUST",
            "NOT be ignored.",
            "### 4.2 HEADERS",
            "A receiver MUST treat MUSTs as nouns.",
            "6.2.1. A receiver MUST apply the table.",
            "More text of 6.2.1 MUST count here.",
            "## Appendix A. Conformance",
        ]
    )
    assert must_counts(sample) == Counter({"4": 2, "4.2": 1, "6.2.1": 2})


def test_removing_a_test_makes_the_check_fail() -> None:
    """The check is not vacuous: dropping one test of a fully covered section is detected."""
    counts = must_counts(PROTOCOL.read_text(encoding="utf-8"))
    tests = spec_tests(conformance_modules())
    tight = [s for s, n in counts.items() if len(tests.get(s, ())) == n]
    section = tight[0] if tight else max(counts, key=lambda s: counts[s])
    reduced = {s: set(names) for s, names in tests.items()}
    reduced[section] = set(sorted(reduced.get(section, set()))[: counts[section] - 1])
    assert section in uncovered(counts, reduced)
