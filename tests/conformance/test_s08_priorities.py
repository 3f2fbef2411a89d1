"""protocol.md §8: urgency and incremental scheduling, frame sizes, tolerance of any order."""

from __future__ import annotations

import pytest
from tests.conformance.harness import CoreUnderTest, Outcome
from tests.refpeer import wire as rw

from ionn_net.config import Limits
from ionn_net.proto import events as ev
from ionn_net.proto.codecs import Codec

MIB = 1 << 20


def _order(frames: list[rw.Frame]) -> list[int]:
    """Stream ids of the stream frames, consecutive duplicates collapsed."""
    out: list[int] = []
    for f in frames:
        if f.type in (rw.T.DATA, rw.T.HEADERS) and (not out or out[-1] != f.stream_id):
            out.append(f.stream_id)
    return out


def _request(core: CoreUnderTest, sid: int, urgency: int, incremental: bool = False) -> None:
    core.feed(
        rw.headers_frame(sid, {"m": "q"}, urgency=urgency, incremental=incremental, end_stream=True)
    )


def _respond(core: CoreUnderTest, sid: int, size: int) -> None:
    core.conn.send_headers(sid, {"m": "r", "body_len": size})
    core.conn.send_data(sid, b"\x05" * size, end_stream=True)


@pytest.mark.spec("8.1")
@pytest.mark.parametrize(("bulk", "urgent"), [(5, 1), (7, 0), (3, 2)])
def test_responses_follow_the_urgency_of_their_request(bulk: int, urgent: int) -> None:
    core = CoreUnderTest().handshake()
    _request(core, 1, bulk, incremental=True)
    _request(core, 3, urgent)
    _respond(core, 1, 900_000)  # within the 1 MiB default stream credit
    assert core.pull_one() is not None  # part of the bulk response is on its way
    _respond(core, 3, 100_000)
    core.drain()
    order = _order(core.frames)
    assert order[:2] == [1, 3] and order[2:] == [1], order  # 3 overtakes, all of it at once
    ends = [f.stream_id for f in core.frames if f.end_stream]
    assert ends == [3, 1]


@pytest.mark.spec("8.1")
def test_less_urgent_request_waits_even_if_answered_first() -> None:
    core = CoreUnderTest().handshake()
    _request(core, 1, 6)
    _request(core, 3, 6)
    _request(core, 5, 1)
    _respond(core, 1, 300_000)
    _respond(core, 3, 300_000)
    _respond(core, 5, 300_000)
    core.drain()
    assert _order(core.frames) == [5, 1, 3]


@pytest.mark.spec("8.2")
def test_control_frames_go_first_in_queue_order() -> None:
    core = CoreUnderTest().handshake()
    _request(core, 1, 3)
    core.feed(rw.headers_frame(3, {"m": "q", "body_len": 10}))
    _respond(core, 1, MIB)  # queued, not yet drained
    core.conn.ping(b"ping-one")
    core.conn.reset_stream(3)
    core.feed(rw.ping_frame(b"theirs!!"), drain=False)
    core.conn.ping(b"ping-two")
    core.drain()
    kinds = [(f.type, f.payload[:8]) for f in core.frames]
    assert kinds[:4] == [
        (rw.T.PING, b"ping-one"),
        (rw.T.RESET, b"\x00\x00\x00\x08"),
        (rw.T.PING, b"theirs!!"),
        (rw.T.PING, b"ping-two"),
    ]
    assert core.frames[4].type == rw.T.HEADERS and core.frames[4].stream_id == 1
    assert {f.type for f in core.frames[5:]} == {rw.T.DATA}


@pytest.mark.spec("8.2")
def test_non_incremental_streams_are_served_one_at_a_time_in_open_order() -> None:
    core = CoreUnderTest(client=True).handshake()
    sids = [core.conn.open_stream({"m": "u", "body_len": 200_000}, urgency=4) for _ in range(3)]
    for sid in reversed(sids):  # bodies queued in reverse order: open order still wins
        core.conn.send_data(sid, b"\x01" * 200_000, end_stream=True)
    core.drain()
    data_order = _order([f for f in core.frames if f.type == rw.T.DATA])
    assert data_order == sids


@pytest.mark.spec("8.2")
def test_incremental_streams_share_round_robin_one_frame_per_turn() -> None:
    core = CoreUnderTest(client=True, limits=Limits(max_chunk=16384)).handshake()
    sids = [
        core.conn.open_stream({"m": "u", "body_len": 65536}, urgency=5, incremental=True)
        for _ in range(3)
    ]
    for sid in sids:
        core.conn.send_data(sid, b"\x02" * 65536, end_stream=True)
    core.drain()
    data = [f.stream_id for f in core.frames if f.type == rw.T.DATA]
    assert data == sids * 4


@pytest.mark.spec("8.2")
def test_lowest_urgency_with_credit_goes_first() -> None:
    core = CoreUnderTest(client=True).handshake(settings=[(4, 65536)])
    slow = core.conn.open_stream({"m": "u", "body_len": 500_000}, urgency=0)
    bulk = core.conn.open_stream({"m": "u", "body_len": 500_000}, urgency=5)
    core.conn.send_data(slow, b"\x01" * 500_000, end_stream=True)
    core.conn.send_data(bulk, b"\x02" * 500_000, end_stream=True)
    core.drain()
    # the urgent stream exhausts its 64 KiB credit, then the less urgent one may send
    assert _order([f for f in core.frames if f.type == rw.T.DATA]) == [slow, bulk]
    core.feed(rw.credit_frame(slow, 200_000))
    assert _order([f for f in core.frames if f.type == rw.T.DATA]) == [slow, bulk, slow]


@pytest.mark.spec("8.3")
@pytest.mark.parametrize("peer_max", [65536, 100_000, 1 << 20])
def test_frames_never_exceed_the_peer_max_frame_size(peer_max: int) -> None:
    core = CoreUnderTest(limits=Limits(max_chunk=1 << 20)).handshake(settings=[(1, peer_max)])
    _request(core, 1, 1)
    _respond(core, 1, 3 * MIB)
    core.feed(rw.credit_frame(1, 8 * MIB))
    sizes = [len(f.payload) for f in core.sent(rw.T.DATA)]
    assert sum(sizes) == 3 * MIB
    assert max(sizes) == min(peer_max, 1 << 20)


@pytest.mark.spec("8.3")
def test_compressed_frames_respect_the_peer_decoded_frame_size() -> None:
    core = CoreUnderTest(limits=Limits(max_chunk=1 << 20)).handshake(settings=[(1, 1 << 20)])
    _request(core, 1, 1)
    core.conn.send_headers(1, {"m": "r", "body_len": 4 * MIB})
    core.conn.send_data(1, bytes(4 * MIB), end_stream=True, codec=Codec.ZSTD)
    core.feed(rw.credit_frame(1, 8 * MIB))
    frames = core.sent(rw.T.DATA)
    assert sum(f.decoded_length for f in frames) == 4 * MIB
    assert all(f.decoded_length <= 1 << 20 for f in frames)


@pytest.mark.spec("8.3")
def test_default_chunk_lets_an_urgent_frame_wait_at_most_one_frame() -> None:
    core = CoreUnderTest().handshake()
    _request(core, 1, 5, incremental=True)
    _respond(core, 1, 4 * MIB)
    for _ in range(3):
        assert core.pull_one() is not None
    core.feed(rw.headers_frame(3, {"m": "q"}, urgency=1, end_stream=True), drain=False)
    _respond(core, 3, 10)
    nxt = core.pull_one()
    assert nxt is not None and nxt.stream_id == 3 and nxt.type == rw.T.HEADERS
    assert Limits().max_chunk <= 65536


@pytest.mark.spec("8.4")
def test_out_of_urgency_order_arrival_is_not_an_error() -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "q", "body_len": 6}, urgency=7))
    core.feed(rw.headers_frame(3, {"m": "q", "body_len": 6}, urgency=0))
    core.feed(rw.data_frame(1, b"abc") + rw.data_frame(3, b"abc"))
    core.feed(rw.data_frame(1, b"def", end_stream=True) + rw.data_frame(3, b"def", end_stream=True))
    assert core.outcome() == Outcome("ignored")
    ends = [e.stream_id for e in core.events if isinstance(e, ev.DataReceived) and e.end_stream]
    assert ends == [1, 3]
