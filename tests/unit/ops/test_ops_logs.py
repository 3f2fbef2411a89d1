"""Session-event logs (ionn_net.ops.hooks), --log-format json (ionn_net.ops.logs) and the
metrics interface (ionn_net.ops.metrics): fields, labels, bounded label values."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ionn_net.ops.hooks import ServerGauges, ServerHooks
from ionn_net.ops.logs import JsonFormatter, configure
from ionn_net.ops.metrics import ServerMetrics

SESSION = "0123456789abcdef" * 2
DIGEST = "ab" * 32


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """configure() replaces the root logger's handlers (pytest's capture among them) and
    level: put them back, or later tests' records go to the terminal."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def json_log() -> io.StringIO:
    out = io.StringIO()
    configure("INFO", "json", static={"worker": 3}, stream=out)
    return out


def records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_the_event_fields_and_never_the_session_key(
    json_log: io.StringIO,
) -> None:
    hooks = ServerHooks()
    hooks.welcomed(SESSION, new=True, peer=("127.0.0.1", 5))
    hooks.blob_completed(SESSION, DIGEST, 1234)
    hooks.request_done("query", "bad_tensor", 0.01, session=SESSION, qid="q7", detail="NaN")
    welcome, blob, failed = records(json_log)
    assert welcome["event"] == "welcome" and welcome["session"] == SESSION[:8]
    assert welcome["worker"] == 3 and welcome["level"] == "INFO" and "pid" in welcome
    assert blob["event"] == "blob_complete" and blob["bytes"] == 1234 and blob["blob"] == DIGEST
    assert failed["level"] == "WARNING" and failed["qid"] == "q7"
    assert failed["outcome"] == "bad_tensor" and "q7" in str(failed["message"])
    assert SESSION not in json_log.getvalue()  # only the 8-digit prefix of the hash


def test_answered_queries_write_no_line(json_log: io.StringIO) -> None:
    ServerHooks().request_done("query", "ok", 0.001, session=SESSION, qid="q1")
    assert records(json_log) == []


def test_text_format_shows_the_message_alone() -> None:
    out = io.StringIO()
    configure("INFO", "text", stream=out)
    ServerHooks().loaded(SESSION, DIGEST, built=3, ready=5, seconds=0.25)
    line = out.getvalue().strip()
    want = "session 01234567: load of model abababab: 3 layers built in 0.250 s, 5 ready"
    assert line.endswith(want)


def test_an_exception_is_one_json_line() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    doc = json.loads(formatter.format(record))
    assert "ValueError: boom" in doc["exception"] and "\n" not in formatter.format(record)


def test_metrics_move_with_the_hooks_and_label_values_stay_bounded() -> None:
    metrics = ServerMetrics(process=False)
    hooks = ServerHooks(metrics)
    value = metrics.registry.get_sample_value
    hooks.request_done("query", "ok", 0.003, session=SESSION)
    hooks.request_done("query", "deadline_exceeded", 0.2, session=SESSION)
    hooks.request_done("query", "no such code", 0.2, session=SESSION)
    hooks.request_done("<attacker>", "cancelled", 0.2, session=SESSION)
    hooks.received("query", 100)
    hooks.refused("queries_per_session", session=SESSION)
    hooks.refused("<attacker>")
    hooks.sample(ServerGauges(connections=2, sessions=1, layers_ready=7, draining=True))
    assert value("ionn_requests_total", {"message": "query", "outcome": "ok"}) == 1
    assert value("ionn_requests_total", {"message": "query", "outcome": "deadline_exceeded"}) == 1
    assert value("ionn_requests_total", {"message": "query", "outcome": "internal"}) == 1
    assert value("ionn_requests_total", {"message": "unknown", "outcome": "cancelled"}) == 1
    count = "ionn_request_duration_seconds_count"
    assert value(count, {"message": "query", "outcome": "ok"}) == 1
    assert value(count, {"message": "unknown", "outcome": "ok"}) is None  # never answered
    assert value("ionn_received_bytes_total", {"message": "query"}) == 100
    assert value("ionn_limit_refusals_total", {"limit": "queries_per_session"}) == 1
    assert value("ionn_limit_refusals_total", {"limit": "<attacker>"}) is None
    gauges = (value("ionn_connections"), value("ionn_layers_ready"), value("ionn_draining"))
    assert gauges == (2, 7, 1)
    assert value("ionn_store_bytes") == 0  # unknown: left as it was
