"""Mutation check: every deliberate bug of ``tests/mutation/table.py`` must be caught.

    .venv/bin/python tests/mutation/run.py                # all mutations
    .venv/bin/python tests/mutation/run.py --only NAME    # some of them (repeatable)
    .venv/bin/python tests/mutation/run.py --list         # the table

For each mutation: copy the repository's src/, tests/, bench/, pyproject.toml and
protocol.md to a temporary directory; apply its edits there (each ``old`` snippet must
occur exactly once, otherwise the mutation fails as "pattern not found" or "pattern
ambiguous": the code moved and the table must follow it); run only the tests named for it,
with pytest from the copy and ``PYTHONPATH=<copy>/src:<copy>`` so that the copy is what
gets imported (checked before each run). A mutation is *caught* when at least one of its
tests fails (its run stops at the first failure, ``pytest -x``). Hypothesis runs with the
no-shrink ``mutation`` profile (tests/conftest.py).

A control run comes first: every named test on an unmutated copy must pass, or a failure
under a mutation would prove nothing. The calibrated server cost model is kept across the
runs (``IONN_TEST_COST_MODEL_DIR``), so only the control run pays for calibrating it.

Exit status: 0 when the control passed and every mutation applied and was caught; 1
otherwise. Prints one line per mutation and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.mutation.table import MUTATIONS, Edit, Mutation  # noqa: E402

#: What a copy holds: the package, the tests, the benchmark scripts some tests run, and the
#: files pytest and the coverage test read.
_COPY = ("src", "tests", "bench", "pyproject.toml", "protocol.md")
_IGNORE = shutil.ignore_patterns(
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "build",
    "*.egg-info",
)


class PatternError(Exception):
    """An edit's ``old`` snippet is missing from its file, or occurs more than once."""


@dataclass
class Outcome:
    name: str
    status: str  # caught | SURVIVED | PATTERN NOT FOUND | PATTERN AMBIGUOUS | ERROR | HUNG
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "caught"


def apply_edits(root: Path, edits: Sequence[Edit]) -> None:
    """Apply ``edits`` to the tree at ``root``; raise PatternError naming the first that
    does not match exactly once (nothing is guaranteed about the tree afterwards)."""
    for edit in edits:
        path = root / edit.path
        if not path.is_file():
            raise PatternError(f"PATTERN NOT FOUND: no file {edit.path}")
        text = path.read_text(encoding="utf-8")
        count = text.count(edit.old)
        if count == 0:
            raise PatternError(f"PATTERN NOT FOUND in {edit.path}: {edit.old.strip()[:70]!r}")
        if count > 1:
            raise PatternError(
                f"PATTERN AMBIGUOUS in {edit.path} ({count} matches): {edit.old.strip()[:70]!r}"
            )
        path.write_text(text.replace(edit.old, edit.new), encoding="utf-8")


def copy_tree(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in _COPY:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=_IGNORE, symlinks=True)
        elif source.is_file():
            shutil.copy2(source, dest / name)
    return dest


def _env(copy: Path, cost_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), str(copy)])
    env["IONN_TEST_COST_MODEL_DIR"] = str(cost_dir)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_import_location(copy: Path, env: dict[str, str]) -> None:
    """The copy's package must be the one imported (not the editable install)."""
    probe = "import ionn_net, sys; sys.stdout.write(ionn_net.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    where = out.stdout.strip()
    if out.returncode or not Path(where).resolve().is_relative_to((copy / "src").resolve()):
        seen = where or out.stderr.strip()
        raise RuntimeError(f"ionn_net imported from {seen!r}, not from {copy / 'src'}")


def run_pytest(
    copy: Path,
    tests: Sequence[str],
    env: dict[str, str],
    timeout_s: float,
    *,
    first_failure: bool = False,
) -> tuple[int | None, list[str], str]:
    """(pytest exit code or None if it hung, failed test ids, tail of its output); with
    ``first_failure`` pytest stops at the first failing test (a mutation is caught by one)."""
    report = copy / "mutation-report.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-profile=mutation",
        f"--junitxml={report}",
        *(["-x"] if first_failure else []),
        *tests,
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return None, [], f"no result within {timeout_s:.0f} s"
    failed: list[str] = []
    if report.is_file():
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return proc.returncode, failed, tail


def run_one(mutation: Mutation, work: Path, cost_dir: Path, timeout_s: float) -> Outcome:
    started = time.monotonic()
    copy = copy_tree(work / mutation.name)
    try:
        apply_edits(copy, mutation.edits)
    except PatternError as exc:
        status = str(exc).split(":", 1)[0].split(" in ")[0]
        return Outcome(mutation.name, status, time.monotonic() - started, detail=str(exc))
    env = _env(copy, cost_dir)
    check_import_location(copy, env)
    code, failed, tail = run_pytest(copy, mutation.tests, env, timeout_s, first_failure=True)
    elapsed = time.monotonic() - started
    shutil.rmtree(copy, ignore_errors=True)
    if code is None:
        return Outcome(mutation.name, "HUNG", elapsed, detail=tail)
    if code == 0:
        return Outcome(mutation.name, "SURVIVED", elapsed)
    if code == 1 and failed:
        return Outcome(mutation.name, "caught", elapsed, failed)
    return Outcome(mutation.name, "ERROR", elapsed, failed, f"pytest exit {code}:\n{tail}")


def run_control(
    mutations: Sequence[Mutation], work: Path, cost_dir: Path, timeout_s: float
) -> Outcome:
    """Every named test, once, on an unmutated copy: all must pass."""
    started = time.monotonic()
    copy = copy_tree(work / "control")
    tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
    env = _env(copy, cost_dir)
    check_import_location(copy, env)
    code, failed, tail = run_pytest(copy, tests, env, timeout_s)
    elapsed = time.monotonic() - started
    shutil.rmtree(copy, ignore_errors=True)
    status = "passed" if code == 0 else ("HUNG" if code is None else "FAILED")
    return Outcome("(control: no mutation)", status, elapsed, failed, "" if code == 0 else tail)


def _short(test_id: str) -> str:
    """``module::test[param]`` from a junit ``package.module::test[param]``; long or
    unprintable parameters are elided."""
    module, _, name = test_id.partition("::")
    base, bracket, param = name.partition("[")
    if bracket and (len(param) > 30 or not param.isprintable()):
        param = "...]"
    return f"{module.rsplit('.', 1)[-1]}::{base}{bracket}{param}"


def markdown(outcomes: Sequence[Outcome], by_name: dict[str, Mutation]) -> str:
    lines = [
        "| mutation | guarantee broken | result | s | failing tests |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        m = by_name.get(o.name)
        tests = ", ".join(f"`{_short(t)}`" for t in o.failed[:3])
        if len(o.failed) > 3:
            tests += f" (+{len(o.failed) - 3})"
        guarantee = m.guarantee if m else "every named test passes unmutated"
        lines.append(f"| `{o.name}` | {guarantee} | {o.status} | {o.seconds:.0f} | {tests} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("--no-control", action="store_true", help="skip the control run")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    parser.add_argument("--cost-model-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.only if n not in by_name]
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; expected some of {sorted(by_name)}")
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTATIONS)
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.guarantee}\n    tests: {', '.join(m.tests)}")
        return 0
    started = time.monotonic()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="ionn-mutation-") as tmp:
        work = Path(tmp)
        cost_dir = args.cost_model_dir or work / "cost-model"
        if not args.no_control:
            control = run_control(chosen, work, cost_dir, args.timeout)
            print(f"{control.name}: {control.status} ({control.seconds:.0f} s)", flush=True)
            if control.status != "passed":
                print(control.detail or f"failed: {control.failed}")
                return 1
            outcomes.append(control)
        for mutation in chosen:
            outcome = run_one(mutation, work, cost_dir, args.timeout)
            outcomes.append(outcome)
            extra = f" by {', '.join(outcome.failed)}" if outcome.failed else ""
            print(f"{outcome.name}: {outcome.status} ({outcome.seconds:.0f} s){extra}", flush=True)
            if outcome.detail:
                print("    " + outcome.detail.replace("\n", "\n    "))
    total = time.monotonic() - started
    bad = [o for o in outcomes if o.name in by_name and not o.ok]
    print()
    print(markdown(outcomes, by_name))
    print()
    caught = sum(1 for o in outcomes if o.ok)
    print(f"{caught}/{len(chosen)} mutations caught in {total:.0f} s", end="")
    print(f"; not caught: {', '.join(o.name for o in bad)}" if bad else "")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
