"""The core's bulk paths: DATA runs delivered as one event, frames taken in batches.

Receiving: consecutive RAW DATA frames of one stream within one input are reported as one
DataReceived (joined bytes, summed wire length) -- same bytes, same credit accounting,
fewer events. Sending: ``frames_to_send`` must emit exactly what ``next_frame`` would,
frame after frame, whatever the budget.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_pair import (
    HDR,
    PREFACE,
    Pair,
    credit,
    data,
    headers,
    parse,
    server_after_handshake,
)
from proto_pair import settings as settings_frame

from ionn_net.config import Limits
from ionn_net.proto import (
    Codec,
    Connection,
    ConnectionTerminated,
    DataFrame,
    DataReceived,
    ErrorCode,
    FrameDecoder,
    StreamReset,
)
from ionn_net.proto.codecs import encode

# ------------------------------------------------------------------------ receive runs


def _open(server: Connection, *sids: int, body_len: int = 1 << 20) -> None:
    server.receive_data(b"".join(headers(s, {"m": "b", "body_len": body_len}) for s in sids), 0)


def test_a_run_of_raw_frames_is_one_event_with_the_summed_wire_length() -> None:
    server = server_after_handshake()
    _open(server, 1)
    parts = [bytes([i]) * (1000 + i) for i in range(5)]
    events = server.receive_data(b"".join(data(1, p) for p in parts), 0.0)
    assert events == [
        DataReceived(stream_id=1, data=b"".join(parts), wire_length=5010, end_stream=False)
    ]
    server.acknowledge_received_data(1, 5010)  # the whole run is acknowledged at once


def test_a_run_ends_at_another_stream_a_codec_or_after_end_stream() -> None:
    server = server_after_handshake()
    _open(server, 1, 3, body_len=6000)
    zstd = encode(bytes(1000), Codec.ZSTD, 1)
    coded = HDR.pack(0, 0, Codec.ZSTD, 0, 1, len(zstd), 1000) + zstd
    wire = (
        data(1, b"a" * 1000)
        + data(1, b"b" * 1000)
        + data(3, b"c" * 1000)  # another stream
        + data(1, b"d" * 1000)
        + coded  # compressed: decoded on its own
        + data(1, b"e" * 1000)
        + data(1, b"f" * 1000, end=True)  # ends the message and the run
    )
    got = [(e.stream_id, e.data, e.end_stream) for e in server.receive_data(wire, 0.0)]
    assert got == [
        (1, b"a" * 1000 + b"b" * 1000, False),
        (3, b"c" * 1000, False),
        (1, b"d" * 1000, False),
        (1, bytes(1000), False),
        (1, b"e" * 1000 + b"f" * 1000, True),
    ]


def test_a_run_stops_before_its_payload_passes_64_kib() -> None:
    server = server_after_handshake()
    _open(server, 1)
    parts = [bytes([i]) * 30000 for i in range(5)]
    events = server.receive_data(b"".join(data(1, p) for p in parts), 0.0)
    sizes = [len(e.data) for e in events if isinstance(e, DataReceived)]
    assert sizes == [60000, 60000, 30000]
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"".join(parts)


def test_frames_split_across_inputs_are_delivered_byte_exact() -> None:
    server = server_after_handshake()
    _open(server, 1, body_len=10 * 4096)
    body = bytes(range(256)) * 160
    wire = b"".join(
        data(1, body[i : i + 4096], end=i + 4096 == len(body)) for i in range(0, len(body), 4096)
    )
    got = b""
    ends = []
    for cut in range(0, len(wire), 5000):  # cuts inside headers and payloads
        for ev in server.receive_data(wire[cut : cut + 5000], 0.0):
            assert isinstance(ev, DataReceived)
            got += ev.data
            ends.append(ev.end_stream)
            server.acknowledge_received_data(1, ev.wire_length)
    assert got == body and ends[-1] and not any(ends[:-1])


def test_credit_is_still_enforced_inside_a_run() -> None:
    server = server_after_handshake()
    _open(server, 1, body_len=4 << 20)
    wire = b"".join(data(1, bytes(65536)) for _ in range(17))  # 1 MiB + 64 KiB, one input
    events = server.receive_data(wire, 0.0)
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].error_code is ErrorCode.FLOW_CONTROL_ERROR


def test_a_body_overrun_inside_a_run_is_a_stream_error() -> None:
    server = server_after_handshake()
    _open(server, 1, body_len=3000)
    events = server.receive_data(data(1, bytes(2000)) + data(1, bytes(2000)), 0.0)
    assert events == [
        StreamReset(stream_id=1, error_code=ErrorCode.MESSAGE_TOO_LARGE, remote=False)
    ]


def test_empty_frames_do_not_join_a_run() -> None:
    server = server_after_handshake()
    _open(server, 1)
    events = server.receive_data(data(1, b"x") + data(1, b"") + data(1, b"y"), 0.0)
    assert [e.data for e in events if isinstance(e, DataReceived)] == [b"x", b"y"]


def test_the_frame_decoder_api_still_yields_every_frame() -> None:
    wire = data(1, b"a") + data(1, b"b")
    assert FrameDecoder().feed(wire) == [
        DataFrame(stream_id=1, data=b"a"),
        DataFrame(stream_id=1, data=b"b"),
    ]
    assert len(FrameDecoder(coalesce_data=True).feed(wire)) == 1


# ------------------------------------------------------------------------- send batches


def _scenario(conn: Connection) -> None:
    """Streams of several urgencies, incremental and not, a coded one, a deferred RESET."""
    conn.initiate()
    a = conn.open_stream({"m": "up", "body_len": 300_000}, urgency=5, incremental=True)
    b = conn.open_stream({"m": "up", "body_len": 200_000}, urgency=5, incremental=True)
    c = conn.open_stream({"m": "q", "body_len": 70_000}, urgency=1)
    d = conn.open_stream({"m": "q", "body_len": 50_000}, urgency=1)
    e = conn.open_stream({"m": "z", "body_len": 90_000}, urgency=3)
    conn.send_data(a, bytes(range(256)) * 1171 + bytes(224), end_stream=True)
    conn.send_data(b, b"b" * 200_000, end_stream=True)
    conn.send_data(c, b"c" * 70_000, end_stream=True)
    conn.send_data(d, b"d" * 50_000, end_stream=True)
    conn.send_data(e, bytes(90_000), end_stream=True, codec=Codec.ZSTD)
    conn.ping(b"pingpong")


def _twins() -> tuple[Connection, Connection]:
    twins = []
    for _ in range(2):
        conn = Connection(client=True, limits=Limits(max_chunk=16384), now=0.0)
        _scenario(conn)
        conn.receive_data(PREFACE + b"", 0.0)
        twins.append(conn)
    return twins[0], twins[1]


@pytest.mark.parametrize("budget", [1, 100, 16400, 65536, 1 << 20])
def test_batches_emit_exactly_what_single_frames_would(budget: int) -> None:
    one, batched = _twins()
    singles = b""
    while (frame := one.next_frame()) is not None:
        singles += frame
    taken = b""
    while True:
        parts, size = batched.frames_to_send(budget)
        if not parts:
            break
        chunk = b"".join(parts)
        assert len(chunk) == size and size >= min(budget, 1)
        taken += chunk
    assert taken == singles
    # Stopped by credit (the peer's default 1 MiB stream / 16 MiB connection) only.
    assert len(parse(singles, skip_preface=True)) > 30


def test_batches_keep_payloads_as_views_of_read_only_bodies() -> None:
    conn = Connection(client=True, now=0.0)
    conn.initiate()
    sid = conn.open_stream({"m": "up", "body_len": 100_000}, urgency=5)
    body = bytes(100_000)
    conn.send_data(sid, body, end_stream=True)
    parts, _ = conn.frames_to_send(1 << 20)
    views = [p for p in parts if isinstance(p, memoryview)]
    assert views and all(v.obj is body for v in views)


def test_opened_streams_sent_follows_the_opening_headers() -> None:
    pair = Pair()
    client = pair.client
    first = client.open_stream({"m": "a"}, end_stream=True)
    second = client.open_stream({"m": "b"}, end_stream=True)
    assert client.opened_streams_sent == 0
    client.next_frame()  # the first opening HEADERS
    assert client.opened_streams_sent == first
    third = client.open_stream({"m": "c"}, end_stream=True)
    client.reset_stream(third)  # never seen by the peer: nothing to wait for
    assert client.opened_streams_sent == third
    pair.pump()
    assert client.opened_streams_sent == third > second


_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("open"),
            st.integers(0, 7),
            st.booleans(),
            st.integers(0, 30_000),
            st.sampled_from([None, Codec.ZSTD, Codec.ZSTD_SHUFFLE4]),
            st.sampled_from([1, 3, 4]),
        ),
        st.tuples(st.just("credit"), st.integers(0, 12), st.integers(1, 400_000)),
        st.tuples(st.just("reset"), st.integers(0, 12), st.booleans()),
        st.tuples(st.just("drain"), st.integers(1, 200_000)),
    ),
    max_size=30,
)


def _apply(conn: Connection, op: tuple[object, ...], sids: list[int]) -> None:
    kind = op[0]
    if kind == "open" and conn.available_streams:
        _, urgency, incremental, quarter, codec, width = op
        assert isinstance(quarter, int) and isinstance(urgency, int)
        size = 4 * quarter  # shuffled bodies hold whole 4-byte elements
        sid = conn.open_stream(
            {"m": "x", "body_len": size}, urgency=urgency, incremental=bool(incremental)
        )
        if size:
            body = bytes(i % 7 for i in range(size))
            conn.send_data(
                sid,
                body,
                end_stream=True,
                codec=codec,  # type: ignore[arg-type]
                element_width=width,  # type: ignore[arg-type]
            )
        sids.append(sid)
    elif kind == "credit" and sids:
        _, index, extra = op
        assert isinstance(index, int) and isinstance(extra, int)
        sid = sids[index % len(sids)]
        conn.receive_data(credit(sid, (1 << 20) + extra) + credit(0, (16 << 20) + extra), 0.0)
    elif kind == "reset" and sids:
        _, index, after = op
        assert isinstance(index, int)
        conn.reset_stream(sids[index % len(sids)], after_pending=bool(after))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_batches_match_single_frames_for_any_scenario(ops: list[tuple[object, ...]]) -> None:
    twins = [Connection(client=True, limits=Limits(max_chunk=8192), now=0.0) for _ in range(2)]
    for conn in twins:
        conn.initiate()
        conn.receive_data(PREFACE + settings_frame(), 0.0)
    sids: list[list[int]] = [[], []]
    for op in [*ops, ("drain", 1 << 30)]:
        for conn, ids in zip(twins, sids, strict=True):
            _apply(conn, op, ids)
        if op[0] != "drain":
            continue
        budget = op[1]
        assert isinstance(budget, int)
        singles = b""
        while len(singles) < budget and (frame := twins[0].next_frame()) is not None:
            singles += frame
        parts, size = twins[1].frames_to_send(budget)
        assert b"".join(parts) == singles and size == len(singles)
    assert twins[0].open_streams == twins[1].open_streams
