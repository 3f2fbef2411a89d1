"""protocol.md §2: connection preface, version negotiation, SETTINGS as the first frame."""

from __future__ import annotations

import pytest
from tests.conformance.harness import CoreUnderTest, Outcome
from tests.refpeer import wire as rw

from ionn_net.proto import events as ev
from ionn_net.proto.connection import Connection
from ionn_net.proto.errors import UsageError


def _core(*, client: bool, versions: tuple[int, int] = (1, 1)) -> CoreUnderTest:
    return CoreUnderTest(client=client, versions=versions)


@pytest.mark.spec("2.1")
@pytest.mark.parametrize("versions", [(1, 1), (1, 3), (2, 2)])
def test_client_preface_is_magic_range_and_zero_reserved(versions: tuple[int, int]) -> None:
    core = _core(client=True, versions=versions)
    assert core.preface == b"IONN" + bytes([*versions, 0, 0])


@pytest.mark.spec("2.1")
def test_client_cannot_offer_min_above_max() -> None:
    with pytest.raises(UsageError):
        Connection(client=True, versions=(2, 1))


@pytest.mark.spec("2.1")
@pytest.mark.parametrize("reserved", [b"\x00\x01", b"\xff\xff", b"\x80\x00"])
def test_server_ignores_reserved_preface_bytes(reserved: bytes) -> None:
    core = CoreUnderTest(client=False)
    core.feed(rw.client_preface(1, 1, reserved) + rw.settings_frame())
    assert core.preface == rw.server_preface(1)
    assert not core.conn.closed
    assert core.outcome() == Outcome("ignored")


@pytest.mark.spec("2.1")
def test_server_preface_reserved_bytes_are_zero() -> None:
    core = CoreUnderTest(client=False)
    core.feed(rw.client_preface(1, 1))
    assert core.preface is not None and core.preface[6:] == b"\0\0"


@pytest.mark.spec("2.2")
@pytest.mark.parametrize(
    "first", [b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n", b"IONX\x01\x01\0\0", b"\0" * 8]
)
def test_server_closes_silently_on_a_foreign_preface(first: bytes) -> None:
    for step in (len(first), 1):
        core = CoreUnderTest(client=False)
        for i in range(0, len(first), step):
            core.feed(first[i : i + step])
        assert core.out == b"", "§2.2: nothing may be sent to a peer that is not IONN"
        assert core.conn.closed


@pytest.mark.spec("2.3")
@pytest.mark.parametrize(
    ("server", "client", "chosen"),
    [((1, 1), (1, 1), 1), ((1, 3), (1, 5), 3), ((1, 3), (2, 2), 2), ((2, 4), (1, 9), 4)],
)
def test_server_answers_the_highest_common_version_twice(
    server: tuple[int, int], client: tuple[int, int], chosen: int
) -> None:
    core = _core(client=False, versions=server)
    core.feed(rw.client_preface(*client))
    assert core.preface == b"IONN" + bytes([chosen, chosen, 0, 0])
    assert core.conn.version == chosen


@pytest.mark.spec("2.3")
def test_client_accepts_a_version_inside_its_range() -> None:
    core = _core(client=True, versions=(1, 3))
    core.feed(rw.server_preface(2) + rw.settings_frame())
    assert not core.conn.closed and core.conn.version == 2
    assert any(isinstance(e, ev.PrefaceReceived) and e.version == 2 for e in core.events)


@pytest.mark.spec("2.4")
@pytest.mark.parametrize(("server", "client"), [((1, 1), (2, 3)), ((3, 4), (1, 2))])
def test_server_without_common_version_sends_its_range_then_goaway(
    server: tuple[int, int], client: tuple[int, int]
) -> None:
    core = _core(client=False, versions=server)
    core.feed(rw.client_preface(*client))
    assert core.preface == b"IONN" + bytes([*server, 0, 0])
    assert core.outcome() == Outcome("connection", "VERSION_MISMATCH")
    assert core.conn.closed


@pytest.mark.spec("2.4")
@pytest.mark.parametrize("answer", [rw.server_preface(2), b"IONN\x01\x02\0\0", b"IONN\x00\x00\0\0"])
def test_client_refuses_a_server_version_outside_its_offer(answer: bytes) -> None:
    core = _core(client=True, versions=(1, 1))
    core.feed(answer + rw.settings_frame())
    assert core.outcome() == Outcome("connection", "VERSION_MISMATCH")
    term = core.terminated()
    assert term is not None and term.error_code.name == "VERSION_MISMATCH"


@pytest.mark.spec("2.5")
@pytest.mark.parametrize("client", [True, False])
def test_settings_is_the_first_frame_after_the_preface(client: bool) -> None:
    core = CoreUnderTest(client=client)
    if not client:
        core.feed(rw.client_preface())
    first = core.frames[0]
    assert first.type == rw.T.SETTINGS and not first.ack


@pytest.mark.spec("2.5")
@pytest.mark.parametrize(
    "first",
    [
        rw.ping_frame(b"12345678"),
        rw.settings_ack(),
        rw.headers_frame(1, {"m": "hello"}, end_stream=True),
        rw.credit_frame(0, 1 << 30),
        rw.goaway_frame(0, 0),
        rw.build_frame(0x7F, 0, 0, b"x"),
    ],
)
@pytest.mark.parametrize("client", [True, False])
def test_first_frame_other_than_settings_is_protocol_error(first: bytes, client: bool) -> None:
    core = CoreUnderTest(client=client)
    preface = rw.server_preface() if client else rw.client_preface()
    core.feed(preface + first)
    assert core.outcome() == Outcome("connection", "PROTOCOL_ERROR")
    assert not [f for f in core.sent(rw.T.PING) if f.ack], "the PING must not be processed"


@pytest.mark.spec("2.5")
def test_single_version_client_sends_settings_without_waiting() -> None:
    core = CoreUnderTest(client=True)
    assert core.preface == rw.client_preface(1, 1)
    assert [f.type for f in core.frames][:1] == [rw.T.SETTINGS]
    sid = core.conn.open_stream({"m": "hello"}, end_stream=True)
    core.drain()
    assert any(f.type == rw.T.HEADERS and f.stream_id == sid for f in core.frames)


@pytest.mark.spec("2.5")
def test_server_accepts_frames_sent_before_its_preface_arrived() -> None:
    early = (
        rw.client_preface()
        + rw.settings_frame()
        + rw.headers_frame(1, {"m": "hi"}, end_stream=True)
    )
    core = CoreUnderTest(client=False)
    core.feed(early)
    heads = [e for e in core.events if isinstance(e, ev.HeadersReceived)]
    assert [h.head["m"] for h in heads] == ["hi"]
