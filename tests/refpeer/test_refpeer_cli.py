"""The reference peer's CLI against the real asyncio EdgeServer on loopback."""

from __future__ import annotations

import json

import pytest
from tests.helpers.edge_server import running_server
from tests.refpeer.__main__ import main


def test_cli_hello_and_have_against_the_edge_server(capsys: pytest.CaptureFixture[str]) -> None:
    with running_server() as server:
        assert main(["--port", str(server.port), "--timeout", "10"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["version"] == 1
    welcome, have = lines[1], lines[2]
    assert welcome["m"] == "welcome" and welcome["cost_model"]["format"] == "ionn-costmodel/1"
    assert have == {**have, "m": "error", "code": "unknown_model"}  # no manifest was sent


def test_cli_reports_a_refused_connection(capsys: pytest.CaptureFixture[str]) -> None:
    with running_server() as server:
        port = server.port
    assert main(["--port", str(port), "--timeout", "2"]) == 1  # the server is gone
    assert "refpeer:" in capsys.readouterr().err
