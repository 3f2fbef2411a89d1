"""A sans-I/O ionn_net Connection with a tiny application, for in-memory peer tests.

``CoreApp`` collects the messages a :class:`~ionn_net.proto.Connection` receives, acknowledges
consumed DATA (so credit flows), and can answer each complete peer request with a handler.
``CoreApp.pump`` is a :class:`tests.refpeer.channels.PipeChannel` pump: it moves the reference
peer's bytes into the core and the core's bytes back, so a blocking ``RefPeer`` can talk to the
core in one thread without sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ionn_net.proto import events as ev
from ionn_net.proto.codecs import Codec
from ionn_net.proto.connection import Connection

Handler = Callable[[Mapping[str, Any], bytes], tuple[dict[str, Any], bytes, Codec | None]]


@dataclass
class Received:
    stream_id: int
    head: Mapping[str, Any] | None = None
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False
    reset: ev.StreamReset | None = None


def echo_handler(
    head: Mapping[str, Any], body: bytes
) -> tuple[dict[str, Any], bytes, Codec | None]:
    """Answers every request with its own body; ``codec`` in the head picks the reply codec."""
    codec = head.get("codec")
    return {"m": "echo", "n": len(body)}, body, Codec(codec) if isinstance(codec, int) else None


class CoreApp:
    """The core plus message bookkeeping (see module docstring)."""

    def __init__(self, conn: Connection, handler: Handler | None = None) -> None:
        self.conn = conn
        self.handler = handler
        self.now = 0.0
        self.events: list[ev.Event] = []
        self.streams: dict[int, Received] = {}

    def receive(self, data: bytes) -> list[ev.Event]:
        new = self.conn.receive_data(data, self.now)
        self.events.extend(new)
        for event in new:
            self._on_event(event)
        return new

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.HeadersReceived):
            rec = self.streams.setdefault(event.stream_id, Received(event.stream_id))
            rec.head = event.head
            rec.complete = event.end_stream
        elif isinstance(event, ev.DataReceived):
            rec = self.streams.setdefault(event.stream_id, Received(event.stream_id))
            rec.body += event.data
            rec.complete = event.end_stream
            self.conn.acknowledge_received_data(event.stream_id, event.wire_length)
        elif isinstance(event, ev.StreamReset):
            self.streams.setdefault(event.stream_id, Received(event.stream_id)).reset = event
            return
        else:
            return
        if rec.complete and self.handler is not None and self._peer_stream(rec.stream_id):
            assert rec.head is not None
            head, body, codec = self.handler(rec.head, bytes(rec.body))
            self.respond(rec.stream_id, head, body, codec)

    def _peer_stream(self, sid: int) -> bool:
        return (sid % 2 == 1) != self.conn.client

    def respond(
        self, sid: int, head: dict[str, Any], body: bytes, codec: Codec | None = None
    ) -> None:
        if self.conn.closed:
            return
        self.conn.send_headers(
            sid, {**head, "body_len": len(body)} if body else head, end_stream=not body
        )
        if body:
            self.conn.send_data(sid, body, end_stream=True, codec=codec)

    def request(
        self,
        head: dict[str, Any],
        body: bytes = b"",
        *,
        codec: Codec | None = None,
        urgency: int = 2,
    ) -> int:
        full = {**head, "body_len": len(body)} if body else head
        sid = self.conn.open_stream(full, urgency=urgency, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True, codec=codec)
        return sid

    def pump(self, pipe: Any) -> None:
        """PipeChannel pump: peer bytes in, core bytes out; EOF once the core is closed."""
        data = pipe.take_outbound()
        if data:
            self.receive(data)
        out = self.conn.data_to_send()
        pipe.inbound += out
        if self.conn.closed and not self.conn.has_data_to_send():
            pipe.eof = True
