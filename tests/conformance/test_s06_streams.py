"""protocol.md §6: stream ids, the half-stream table (exhaustively, both directions), RESET from
every state, idle and closed streams, and concurrency limits.

The oracle for the table is protocol.md itself: the markdown table of §6.2 is parsed here, so a
change of the specification that the core does not follow fails these tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conformance.harness import (
    CoreUnderTest,
    Outcome,
    check_acceptable_vector,
    check_invalid_vector,
)
from tests.conformance.vectors import category, vid
from tests.refpeer import wire as rw
from tests.refpeer.peer import HALF_TABLE as REF_TABLE

from ionn_net.config import Limits
from ionn_net.proto import events as ev
from ionn_net.proto.errors import ErrorCode, UsageError
from ionn_net.proto.streams import HALF_TABLE, FrameKind, HalfState, StreamState

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol.md"
KINDS = ["HEADERS", "HEADERS+END_STREAM", "DATA", "DATA+END_STREAM"]
CORE_KIND = {
    "HEADERS": FrameKind.HEADERS,
    "HEADERS+END_STREAM": FrameKind.HEADERS_END,
    "DATA": FrameKind.DATA,
    "DATA+END_STREAM": FrameKind.DATA_END,
}


def spec_table() -> dict[tuple[str, str], str]:
    """(half state, frame kind) -> "BODY" / "ENDED" / error code name, from protocol.md §6.2."""
    lines = PROTOCOL.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| half state |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert header[1:] == KINDS, header
    table: dict[tuple[str, str], str] = {}
    for line in lines[start + 2 : start + 5]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for kind, cell in zip(KINDS, cells[1:], strict=True):
            match = re.fullmatch(r"error (\w+)", cell)
            table[cells[0], kind] = match.group(1) if match else cell
    return table


SPEC = spec_table()


@pytest.mark.spec("6.2")
def test_core_and_reference_tables_equal_the_specification() -> None:
    assert len(SPEC) == 12
    for (state, kind), want in SPEC.items():
        core = HALF_TABLE[HalfState[state], CORE_KIND[kind]]
        got = core.name if isinstance(core, HalfState | ErrorCode) else str(core)
        assert got == want, (state, kind)
        ref = REF_TABLE[rw_half(state), (kind.startswith("HEADERS"), kind.endswith("END_STREAM"))]
        assert ref.name == want


def rw_half(name: str) -> object:
    from tests.refpeer.peer import Half

    return Half[name]


# ----- drivers that put one stream into a given pair of half states --------------------------


@dataclass
class Scene:
    core: CoreUnderTest
    sid: int
    local: str


def scene_remote(remote: str) -> Scene:
    """A stream whose remote half is ``remote`` and whose local half is not ENDED."""
    if remote == "EXPECT_HEADERS":  # we opened it and sent part of a body
        core = CoreUnderTest(client=True).handshake()
        sid = core.conn.open_stream({"m": "q", "body_len": 10})
        core.conn.send_data(sid, b"01234")
        core.drain()
        return Scene(core, sid, "BODY")
    core = CoreUnderTest().handshake()
    if remote == "BODY":
        core.feed(rw.headers_frame(1, {"m": "q", "body_len": 2}))
    else:
        core.feed(rw.headers_frame(1, {"m": "q"}, end_stream=True))
    return Scene(core, 1, "EXPECT_HEADERS")


def remote_input(kind: str, sid: int) -> bytes:
    """A frame of ``kind`` consistent with a body_len of 2 (so only the table can object)."""
    return {
        "HEADERS": rw.headers_frame(sid, {"m": "r", "body_len": 2}),
        "HEADERS+END_STREAM": rw.headers_frame(sid, {"m": "r"}, end_stream=True),
        "DATA": rw.data_frame(sid, b"a"),
        "DATA+END_STREAM": rw.data_frame(sid, b"ab", end_stream=True),
    }[kind]


DERIVED = {
    (False, False): StreamState.OPEN,
    (True, False): StreamState.HALF_CLOSED_LOCAL,
    (False, True): StreamState.HALF_CLOSED_REMOTE,
    (True, True): StreamState.CLOSED,
}


@pytest.mark.spec("6.2.1")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("remote", ["EXPECT_HEADERS", "BODY", "ENDED"])
def test_remote_half_table_every_state_and_frame(remote: str, kind: str) -> None:
    scene = scene_remote(remote)
    scene.core.feed(remote_input(kind, scene.sid))
    want = SPEC[remote, kind]
    outcome = scene.core.outcome()
    if want in ("BODY", "ENDED"):
        assert outcome == Outcome("ignored"), outcome
        state = DERIVED[scene.local == "ENDED", want == "ENDED"]
        assert scene.core.conn.stream_state(scene.sid) is state
    else:  # a stream error: RESET with the code (or the connection ends with it)
        assert outcome.code == want and outcome.kind in ("stream", "connection"), outcome
        assert scene.core.conn.stream_state(scene.sid) is StreamState.CLOSED


def scene_local(local: str) -> Scene:
    """A stream whose local half is ``local`` and whose remote half is not ENDED or empty."""
    if local == "ENDED":
        core = CoreUnderTest(client=True).handshake()
        sid = core.conn.open_stream({"m": "q"}, end_stream=True)
        core.drain()
        return Scene(core, sid, local)
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "q"}, end_stream=True))
    if local == "BODY":
        core.conn.send_headers(1, {"m": "r", "body_len": 2})
        core.drain()
    return Scene(core, 1, local)


def local_send(scene: Scene, kind: str) -> None:
    conn, sid = scene.core.conn, scene.sid
    {
        "HEADERS": lambda: conn.send_headers(sid, {"m": "r", "body_len": 2}),
        "HEADERS+END_STREAM": lambda: conn.send_headers(sid, {"m": "r"}, end_stream=True),
        "DATA": lambda: conn.send_data(sid, b"a"),
        "DATA+END_STREAM": lambda: conn.send_data(sid, b"ab", end_stream=True),
    }[kind]()


@pytest.mark.spec("6.2.4")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("local", ["EXPECT_HEADERS", "BODY", "ENDED"])
def test_local_half_table_every_state_and_frame(local: str, kind: str) -> None:
    scene = scene_local(local)
    want = SPEC[local, kind]
    before = len(scene.core.frames)
    if want in ("BODY", "ENDED"):
        local_send(scene, kind)
        scene.core.drain()
        sent = [f for f in scene.core.frames[before:] if f.stream_id == scene.sid]
        assert sent and sent[-1].end_stream == (want == "ENDED")
    else:  # §6.2.4: a local usage error, and nothing reaches the wire
        with pytest.raises(UsageError):
            local_send(scene, kind)
        scene.core.drain()
        assert scene.core.frames[before:] == []
        assert not scene.core.conn.closed


RESET_SCENES = {
    "open (we opened)": lambda: scene_remote("EXPECT_HEADERS"),
    "open (peer opened)": lambda: scene_remote("BODY"),
    "half_closed_local": lambda: scene_local("ENDED"),
    "half_closed_remote": lambda: scene_remote("ENDED"),
}


@pytest.mark.spec("6.2.3")
@pytest.mark.parametrize("name", list(RESET_SCENES))
@pytest.mark.parametrize("who", ["peer", "core"])
def test_reset_closes_the_stream_from_every_state(name: str, who: str) -> None:
    scene = RESET_SCENES[name]()
    core, sid = scene.core, scene.sid
    assert core.conn.stream_state(sid) is not StreamState.CLOSED
    if who == "peer":
        core.feed(rw.reset_frame(sid, ErrorCode.CANCEL))
        resets = [e for e in core.events if isinstance(e, ev.StreamReset)]
        assert [(r.stream_id, r.remote, r.error_code) for r in resets] == [
            (sid, True, ErrorCode.CANCEL)
        ]
    else:
        core.conn.reset_stream(sid, ErrorCode.CANCEL)
        core.drain()
        assert core.resets() == [(sid, ErrorCode.CANCEL)]
    assert core.conn.stream_state(sid) is StreamState.CLOSED
    n = len(core.events)  # closed stays closed: everything on it is ignored (§6.2.2)
    core.feed(rw.data_frame(sid, b"x") + rw.reset_frame(sid, 1) + rw.credit_frame(sid, 1 << 30))
    assert core.events[n:] == [] and core.outcome().kind != "connection"
    assert core.conn.stream_state(sid) is StreamState.CLOSED


@pytest.mark.spec("6.2.2")
@pytest.mark.parametrize("vector", category("invalid", "6.2.2"), ids=vid)
def test_idle_and_closed_stream_vectors(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("6.2.2")
@pytest.mark.parametrize("vector", category("acceptable", "6.2.2"), ids=vid)
def test_frames_on_a_skipped_id_either_outcome(vector: dict[str, object]) -> None:
    check_acceptable_vector(vector)


@pytest.mark.spec("6.2.2")
@pytest.mark.parametrize("client", [True, False])
def test_idle_stream_rules_in_both_roles(client: bool) -> None:
    """Idle ids of either parity: DATA/RESET/CREDIT are connection PROTOCOL_ERRORs."""
    for sid in (2, 3, 100, 101, 2**31 - 1):
        for frame in (
            rw.data_frame(sid, b"x"),
            rw.reset_frame(sid, 8),
            rw.credit_frame(sid, 1 << 20),
        ):
            core = CoreUnderTest(client=client).handshake()
            core.feed(frame)
            assert core.outcome() == Outcome("connection", "PROTOCOL_ERROR"), (sid, frame)


@pytest.mark.spec("6.2.1")
@pytest.mark.parametrize("vector", category("invalid", "6.2.1"), ids=vid)
def test_table_errors_as_golden_vectors(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("6.1.1")
@pytest.mark.parametrize("vector", category("invalid", "6.1.1"), ids=vid)
def test_peer_stream_id_rules(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("6.1.1")
@pytest.mark.parametrize("client", [True, False])
def test_core_opens_strictly_increasing_ids_of_its_parity(client: bool) -> None:
    core = CoreUnderTest(client=client).handshake()
    ids = [core.conn.open_stream({"m": "q"}, end_stream=True) for _ in range(5)]
    core.drain()
    first = 1 if client else 2
    assert ids == [first + 2 * i for i in range(5)]
    assert [f.stream_id for f in core.sent(rw.T.HEADERS)] == ids


@pytest.mark.spec("6.1.1")
def test_a_closed_stream_id_is_never_reopened() -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "q"}, end_stream=True))
    core.conn.send_headers(1, {"m": "r"}, end_stream=True)
    core.drain()
    assert core.conn.stream_state(1) is StreamState.CLOSED
    core.feed(rw.headers_frame(1, {"m": "again"}, end_stream=True))
    assert core.outcome() == Outcome("connection", "PROTOCOL_ERROR")  # §6.2.2, §6.1.1
    assert not [e for e in core.events if isinstance(e, ev.HeadersReceived) and e.stream_id == 1][
        1:
    ]


@pytest.mark.spec("6.3")
def test_streams_beyond_max_concurrent_streams_are_refused() -> None:
    core = CoreUnderTest(limits=Limits(max_concurrent_streams=2)).handshake()
    core.feed(b"".join(rw.headers_frame(s, {"m": "q", "body_len": 5}) for s in (1, 3, 5)))
    assert core.resets() == [(5, ErrorCode.REFUSED_STREAM)]
    heads = [e.stream_id for e in core.events if isinstance(e, ev.HeadersReceived)]
    assert heads == [1, 3], "a refused stream must not be processed"
    assert core.conn.stream_state(5) is StreamState.CLOSED
    core.feed(rw.data_frame(5, b"12345", end_stream=True))  # ignored, closed
    assert not [e for e in core.events if isinstance(e, ev.DataReceived)]
    core.feed(rw.data_frame(1, b"12345", end_stream=True))
    core.conn.send_headers(1, {"m": "ok"}, end_stream=True)
    core.drain()  # stream 1 is closed now: a new stream fits again
    core.feed(rw.headers_frame(7, {"m": "q"}, end_stream=True))
    assert 7 in [e.stream_id for e in core.events if isinstance(e, ev.HeadersReceived)]


@pytest.mark.spec("6.3")
def test_zero_concurrent_streams_refuses_everything() -> None:
    core = CoreUnderTest(limits=Limits(max_concurrent_streams=0)).handshake()
    core.feed(rw.headers_frame(1, {"m": "q"}, end_stream=True))
    assert core.resets() == [(1, ErrorCode.REFUSED_STREAM)]
    assert not core.conn.closed


@pytest.mark.spec("6.3")
def test_core_never_opens_more_than_the_peer_allows() -> None:
    core = CoreUnderTest(client=True).handshake(settings=[(3, 2)])
    core.conn.open_stream({"m": "q"}, end_stream=True)
    core.conn.open_stream({"m": "q"}, end_stream=True)
    with pytest.raises(UsageError):
        core.conn.open_stream({"m": "q"}, end_stream=True)
    core.drain()
    assert len(core.sent(rw.T.HEADERS)) == 2
    core.feed(rw.headers_frame(1, {"m": "r"}, end_stream=True))  # stream 1 now closed
    assert core.conn.open_stream({"m": "q"}, end_stream=True) == 5
