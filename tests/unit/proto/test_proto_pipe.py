"""Two real Connections over an in-memory pipe: a 20 MiB shuffled-zstd upload while
queries run, resets, a ping and a graceful GOAWAY (protocol.md §6-§8, §12, §13)."""

from __future__ import annotations

import hashlib

import numpy as np

from ionn_net.proto import (
    Codec,
    Connection,
    ConnectionTerminated,
    DataReceived,
    Event,
    HeadersReceived,
    PingAcked,
    StreamReset,
)

MIB = 1 << 20
PIECE = 7919  # odd delivery size: frames straddle every read boundary


def _upload_body() -> bytes:
    # float32 values that are exactly bf16: the low two bytes of each element are zero,
    # so byte shuffling (codec 2) lets zstd drop them (~2.9x, see bench/codec.py).
    rng = np.random.default_rng(7)
    values = rng.normal(0, 0.05, 20 * MIB // 4).astype(np.float32)
    return (values.view(np.uint32) & np.uint32(0xFFFF0000)).tobytes()


class Server:
    """Answers every completed query with its body reversed; counts upload bytes."""

    def __init__(self) -> None:
        self.conn = Connection(client=False)
        self.bodies: dict[int, bytearray] = {}
        self.heads: dict[int, dict[str, object]] = {}
        self.upload_wire = 0
        self.upload_hash = hashlib.sha256()
        self.upload_len = 0
        self.events: list[Event] = []

    def handle(self, events: list[Event]) -> None:
        self.events += events
        for ev in events:
            if isinstance(ev, HeadersReceived):
                self.heads[ev.stream_id] = dict(ev.head)
                self.bodies[ev.stream_id] = bytearray()
            elif isinstance(ev, DataReceived):
                self._on_data(ev)

    def _on_data(self, ev: DataReceived) -> None:
        self.conn.acknowledge_received_data(ev.stream_id, ev.wire_length)
        if self.heads[ev.stream_id]["m"] == "blob":
            self.upload_wire += ev.wire_length
            self.upload_len += len(ev.data)
            self.upload_hash.update(ev.data)
        else:
            self.bodies[ev.stream_id] += ev.data
        if not ev.end_stream:
            return
        answer = bytes(reversed(self.bodies[ev.stream_id]))
        if self.heads[ev.stream_id].get("refuse"):
            self.conn.reset_stream(ev.stream_id)
            return
        self.conn.send_headers(ev.stream_id, {"m": "result", "body_len": len(answer)})
        self.conn.send_data(ev.stream_id, answer, end_stream=True)


def _deliver(src: Connection, dst: Connection, budget: int) -> tuple[int, list[Event]]:
    wire = src.data_to_send(budget)
    events: list[Event] = []
    for i in range(0, len(wire), PIECE):
        events += dst.receive_data(wire[i : i + PIECE], 0.0)
    assert dst.decoder_buffered_bytes <= 16 + 65536
    return len(wire), events


class Client:
    """Uploads one body while issuing queries; records answers and when they completed."""

    def __init__(self, body: bytes) -> None:
        self.conn = Connection(client=True)
        self.conn.initiate()
        self.upload = self.conn.open_stream(
            {"m": "blob", "body_len": len(body)}, urgency=5, incremental=True
        )
        self.conn.send_data(
            self.upload, body, end_stream=True, codec=Codec.ZSTD_SHUFFLE4, element_width=4
        )
        self.queries: dict[int, bytes] = {}
        self.answers: dict[int, bytearray] = {}
        self.done_at: dict[int, int] = {}  # stream -> upload bytes the server had by then
        self.opened_round: dict[int, int] = {}
        self.done_round: dict[int, int] = {}
        self.round = 0
        self.events: list[Event] = []

    def query(self, text: str, *, refuse: bool = False) -> int:
        payload = text.encode() * 50
        head = {"m": "query", "body_len": len(payload), "refuse": refuse}
        sid = self.conn.open_stream(head, urgency=1)
        self.conn.send_data(sid, payload, end_stream=True)
        self.queries[sid] = payload
        self.opened_round[sid] = self.round
        return sid

    def handle(self, events: list[Event], server: Server) -> None:
        self.events += events
        for ev in events:
            if isinstance(ev, DataReceived):
                self.conn.acknowledge_received_data(ev.stream_id, ev.wire_length)
                self.answers.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                if ev.end_stream:
                    self.done_at[ev.stream_id] = server.upload_len
                    self.done_round[ev.stream_id] = self.round


def _run(client: Client, server: Server) -> None:
    for rounds in range(1, 10_000):
        client.round = rounds
        if rounds in (3, 6, 9, 12, 15, 18):  # queries keep arriving during the upload
            client.query(f"query {rounds}", refuse=rounds == 12)
        if rounds == 7:
            client.conn.ping(b"pingpong")
        if rounds == 9:
            client.conn.reset_stream(max(client.queries))  # gives up on the newest query
        moved, evs = _deliver(client.conn, server.conn, 256 * 1024)
        server.handle(evs)
        back, evs = _deliver(server.conn, client.conn, 256 * 1024)
        client.handle(evs, server)
        if rounds > 18 and not moved and not back:
            return
    raise AssertionError("the exchange did not settle")


def test_upload_queries_resets_ping_and_goaway_over_a_pipe() -> None:
    body = _upload_body()
    client, server = Client(body), Server()
    _run(client, server)
    # The upload arrived intact and compressed on the wire.
    assert server.upload_len == len(body)
    assert server.upload_hash.digest() == hashlib.sha256(body).digest()
    assert server.upload_wire < 0.6 * len(body)
    # Every query neither reset by the client nor refused by the server got its answer in
    # the round it was sent, ahead of the upload backlog (queries urgency 1, upload 5).
    answered = set(client.done_at) - {client.upload}
    assert len(answered) == len(client.queries) - 2
    for sid in answered:
        assert bytes(client.answers[sid]) == bytes(reversed(client.queries[sid]))
        assert client.done_round[sid] == client.opened_round[sid]
        assert client.done_at[sid] < len(body)
    assert PingAcked(payload=b"pingpong") in client.events
    resets = [e for e in client.events if isinstance(e, StreamReset)]
    assert len(resets) == 1 and resets[0].remote and resets[0].error_code == 8
    # Graceful shutdown: GOAWAY both ways, both sides closed, nothing left to send.
    client.conn.close()
    _, evs = _deliver(client.conn, server.conn, 1 << 20)
    server.handle(evs)
    _deliver(server.conn, client.conn, 1 << 20)
    assert client.conn.closed and server.conn.closed
    assert any(isinstance(e, ConnectionTerminated) and e.error is None for e in server.events)
    assert client.conn.open_streams == server.conn.open_streams == ()
    assert not client.conn.has_data_to_send() and not server.conn.has_data_to_send()
