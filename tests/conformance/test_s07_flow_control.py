"""protocol.md §7: absolute credit limits, in both roles of the core (sender and receiver)."""

from __future__ import annotations

import pytest
from tests.conformance.harness import CoreUnderTest, Outcome, check_invalid_vector
from tests.conformance.vectors import category, vid
from tests.refpeer import wire as rw

from ionn_net.config import Limits
from ionn_net.proto import events as ev
from ionn_net.proto.codecs import Codec

MIB = 1 << 20


def _sent(core: CoreUnderTest, sid: int | None = None) -> int:
    return sum(len(f.payload) for f in core.sent(rw.T.DATA) if sid is None or f.stream_id == sid)


def _responding(core: CoreUnderTest, sid: int, size: int, codec: Codec | None = None) -> None:
    core.feed(rw.headers_frame(sid, {"m": "q"}, end_stream=True))
    core.conn.send_headers(sid, {"m": "r", "body_len": size})
    core.conn.send_data(sid, bytes(range(256)) * (size // 256), end_stream=True, codec=codec)
    core.drain()


@pytest.mark.spec("7.2")
@pytest.mark.parametrize("initial", [65536, 100_000, MIB])
def test_sender_stops_at_the_stream_limit_and_resumes_on_credit(initial: int) -> None:
    core = CoreUnderTest().handshake(settings=[(4, initial)])
    _responding(core, 1, 3 * MIB)
    assert _sent(core) == initial  # everything the limit allows, not a byte more
    core.feed(rw.credit_frame(1, initial + 5000))
    assert _sent(core) == initial + 5000
    core.feed(rw.credit_frame(1, 3 * MIB))
    assert _sent(core) == 3 * MIB
    assert core.sent(rw.T.DATA)[-1].end_stream


@pytest.mark.spec("7.2")
def test_sender_shares_the_connection_limit_across_streams() -> None:
    core = CoreUnderTest().handshake(settings=[(4, 2**31 - 1)])
    for sid in (1, 3, 5):
        _responding(core, sid, 7 * MIB)
    assert _sent(core) == 16 * MIB  # the default connection limit (§11.1, §7.4)
    core.feed(rw.credit_frame(0, 21 * MIB))
    assert _sent(core) == 21 * MIB


@pytest.mark.spec("7.2")
def test_credit_counts_wire_bytes_after_encoding() -> None:
    """A compressed frame consumes its wire length, so more decoded bytes fit in the limit."""
    core = CoreUnderTest().handshake(settings=[(4, 65536)])
    _responding(core, 1, 4 * MIB, codec=Codec.ZSTD)
    frames = core.sent(rw.T.DATA)
    assert sum(len(f.payload) for f in frames) <= 65536
    assert sum(f.decoded_length for f in frames) > 65536


@pytest.mark.spec("7.2")
@pytest.mark.parametrize("excess", [1, 1000])
def test_receiver_treats_stream_credit_violation_as_flow_control_error(excess: int) -> None:
    limits = Limits(initial_stream_credit=65536)
    core = CoreUnderTest(limits=limits).handshake()
    core.feed(rw.headers_frame(1, {"m": "q", "body_len": 4 * MIB}))
    core.feed(rw.data_frame(1, b"\0" * 65536))
    assert core.outcome() == Outcome("ignored")
    core.feed(rw.data_frame(1, b"\0" * excess))
    assert core.outcome() == Outcome("connection", "FLOW_CONTROL_ERROR")


@pytest.mark.spec("7.2")
def test_receiver_treats_connection_credit_violation_as_flow_control_error() -> None:
    """16 MiB + 1 byte over several streams, with no CREDIT released by the application."""
    core = CoreUnderTest().handshake()
    for sid in range(1, 35, 2):
        core.feed(rw.headers_frame(sid, {"m": "q", "body_len": MIB}))
    chunk = b"\0" * 65536
    for sid in range(1, 33, 2):  # 16 streams x 1 MiB = the whole connection window
        for _ in range(16):
            core.feed(rw.data_frame(sid, chunk))
    assert core.outcome() == Outcome("ignored")
    core.feed(rw.data_frame(33, b"\0"))
    assert core.outcome() == Outcome("connection", "FLOW_CONTROL_ERROR")


@pytest.mark.spec("7.2")
def test_receiver_grants_new_credit_as_the_application_consumes() -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "q", "body_len": 3 * MIB}))
    total = 0
    for _ in range(40):
        for event in core.feed(rw.data_frame(1, b"\1" * 65536)):
            if isinstance(event, ev.DataReceived):
                core.conn.acknowledge_received_data(1, event.wire_length)
        total += 65536
    core.drain()
    limits = [int.from_bytes(f.payload, "big") for f in core.sent(rw.T.CREDIT) if f.stream_id == 1]
    assert limits and limits == sorted(limits) and limits[-1] >= total
    assert core.outcome() == Outcome("ignored")


@pytest.mark.spec("7.3")
def test_credit_that_does_not_raise_the_limit_is_ignored() -> None:
    core = CoreUnderTest().handshake(settings=[(4, 100_000)])
    _responding(core, 1, MIB)
    assert _sent(core) == 100_000
    core.feed(rw.credit_frame(1, 50_000) + rw.credit_frame(1, 100_000))  # lower, equal
    assert _sent(core) == 100_000 and core.outcome() == Outcome("ignored")
    core.feed(rw.credit_frame(1, 200_000) + rw.credit_frame(1, 150_000))
    assert _sent(core) == 200_000  # the later, lower CREDIT did not take anything back
    assert core.conn.available_credit(1) == 0


@pytest.mark.spec("7.3")
def test_credit_is_idempotent() -> None:
    core = CoreUnderTest().handshake(settings=[(4, 65536)])
    _responding(core, 1, MIB)
    for _ in range(5):
        core.feed(rw.credit_frame(1, 300_000))
    assert _sent(core) == 300_000


@pytest.mark.spec("7.3")
def test_credit_of_exactly_2_pow_62_is_accepted() -> None:
    core = CoreUnderTest().handshake()
    _responding(core, 1, MIB)
    core.feed(rw.credit_frame(1, 2**62) + rw.credit_frame(0, 2**62))
    assert core.outcome() == Outcome("ignored") and _sent(core) == MIB


@pytest.mark.spec("7.3")
@pytest.mark.parametrize("vector", category("invalid", "7.3"), ids=vid)
def test_credit_above_2_pow_62_is_a_protocol_error(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("7.4")
def test_new_initial_stream_credit_raises_open_streams_and_sets_new_ones() -> None:
    core = CoreUnderTest().handshake(settings=[(4, 65536)])
    _responding(core, 1, 3 * MIB)
    assert _sent(core, 1) == 65536
    core.feed(rw.settings_frame([(4, 200_000)]))
    assert _sent(core, 1) == 200_000  # larger of the current limit and the new value
    core.feed(rw.settings_frame([(4, 70_000)]))
    _responding(core, 3, MIB)
    assert _sent(core, 1) == 200_000 and _sent(core, 3) == 70_000


@pytest.mark.spec("7.5")
def test_headers_and_control_frames_are_not_flow_controlled() -> None:
    core = CoreUnderTest().handshake(settings=[(4, 65536)])
    _responding(core, 1, MIB)
    assert core.conn.available_credit(1) == 0
    core.feed(rw.ping_frame(b"stillgo!") + rw.headers_frame(3, {"m": "q"}, end_stream=True))
    core.conn.send_headers(3, {"m": "r"}, end_stream=True)
    core.drain()
    assert [f.payload for f in core.sent(rw.T.PING) if f.ack] == [b"stillgo!"]
    assert [f.stream_id for f in core.sent(rw.T.HEADERS)][-1] == 3
