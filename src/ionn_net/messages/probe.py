"""Messages of the transport benchmark (``bench/transport.py``, ``bench/codec.py``).

Not part of protocol.md §10: a bare upload and a timed query/result pair that the
benchmarks carry over the real transport (so that their figures include its framing,
priorities and flow control) without a model behind them. Same shape as §10's messages:
a frozen dataclass each, with ``parse`` and ``to_head``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ionn_net.messages.members import MemberError, get_body_len, get_int, get_number

__all__ = ["ProbeQuery", "ProbeResult", "ProbeUpload", "ProbeUploadOk", "parse_probe"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeQuery:
    """A query-sized request; its body is payload only."""

    KIND: ClassVar[str] = "query"
    body_len: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> ProbeQuery:
        return cls(body_len=get_body_len(head))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "body_len": self.body_len}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """The answer to a :class:`ProbeQuery`: when the server saw its head and its body
    end (the host's monotonic clock) and its event loop's worst lag meanwhile."""

    KIND: ClassVar[str] = "result"
    body_len: int
    t_head: float
    t_body: float
    lag_s: float

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> ProbeResult:
        return cls(
            body_len=get_body_len(head),
            t_head=get_number(head, "t_head"),
            t_body=get_number(head, "t_body"),
            lag_s=get_number(head, "lag_s"),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "body_len": self.body_len,
            "t_head": self.t_head,
            "t_body": self.t_body,
            "lag_s": self.lag_s,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeUpload:
    """A bulk upload of ``body_len`` bytes of payload."""

    KIND: ClassVar[str] = "upload"
    body_len: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> ProbeUpload:
        return cls(body_len=get_body_len(head))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "body_len": self.body_len}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeUploadOk:
    """The answer to a :class:`ProbeUpload`: the bytes the server received."""

    KIND: ClassVar[str] = "upload_ok"
    received: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> ProbeUploadOk:
        return cls(received=get_int(head, "received"))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "received": self.received}


_PROBES: dict[str, type[ProbeQuery | ProbeResult | ProbeUpload | ProbeUploadOk]] = {
    cls.KIND: cls for cls in (ProbeQuery, ProbeResult, ProbeUpload, ProbeUploadOk)
}


def parse_probe(head: Mapping[str, Any]) -> ProbeQuery | ProbeResult | ProbeUpload | ProbeUploadOk:
    """``head`` as the benchmark message it names."""
    kind = head.get("m")
    cls = _PROBES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MemberError("m", f"one of {sorted(_PROBES)}", kind)
    return cls.parse(head)
