"""protocol.md Appendix B is generated from the code's own tables (Appendix A): regenerating it
into a string must give exactly the text between its markers, so the appendix and the limits the
server enforces cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from ionn_net.model.appendix import BEGIN, END, main, render, replace_block
from ionn_net.model.limits import SpecLimits

PROTOCOL = Path(__file__).resolve().parent.parent.parent / "protocol.md"


def generated_block(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].lstrip("\n")


@pytest.mark.spec("A")
def test_appendix_b_is_what_the_code_generates() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    assert generated_block(text) == render(), (
        "protocol.md Appendix B is stale: run `python -m ionn_net.model.appendix protocol.md`"
    )


@pytest.mark.spec("A")
def test_a_changed_cap_or_table_is_detected(tmp_path: Path) -> None:
    """The check is not vacuous: a different limit renders differently, and --check fails on
    a stale file until it is regenerated."""
    text = PROTOCOL.read_text(encoding="utf-8")
    assert render(SpecLimits(max_units=1234)) != render()
    assert "an integer in [1, 1234]" in render(SpecLimits(max_units=1234))
    stale = tmp_path / "protocol.md"
    stale.write_text(replace_block(text, render(SpecLimits(max_kernel=7))), encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert main([str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text


def test_the_appendix_names_every_class_and_cap() -> None:
    from ionn_net.model.limits import cap_docs
    from ionn_net.model.schema import SCHEMAS

    block = generated_block(PROTOCOL.read_text(encoding="utf-8"))
    for cls in SCHEMAS:
        assert f"#### {cls}\n" in block, cls
    for cap in cap_docs():
        assert f"| `{cap}` |" in block, cap
