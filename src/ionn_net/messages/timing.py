"""§10.11: ``timings`` / ``timings_ok``, the server's measured (and predicted) per-layer
times of one model, and :class:`TimingTable`, their body.

The head is checked like any other (:meth:`TimingsOk.parse`). The body is untrusted input
checked against the model it is about (§10.11.2): :meth:`TimingTable.decode` keeps only the
entries that name a layer of that model with a finite value in [0, 1e5] ms and counts the
rest, so that the client falls back to its own prediction for exactly those layers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Final

from ionn_net.messages.members import (
    MemberError,
    get_body_len,
    get_bool,
    get_digest,
    get_int,
    get_number,
)

__all__ = ["MAX_LAYER_MS", "MAX_TIMINGS_BODY", "MAX_WAIT_MS", "TimingTable", "Timings", "TimingsOk"]

#: §10.11: the largest time a server may announce for one layer, and for ``call_ms``.
MAX_LAYER_MS: Final = 1e5
#: §10.11: the longest a ``timings`` request may ask the server to wait.
MAX_WAIT_MS: Final = 60_000
#: Largest ``timings_ok`` body a client reads (2048 layers take about 100 KB).
MAX_TIMINGS_BODY: Final = 4 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Timings:
    """§10.11: what does the server know of ``model``'s per-layer times? With ``wait_ms``
    > 0 the answer may wait until timing is done (at most that long)."""

    KIND: ClassVar[str] = "timings"
    model: str
    wait_ms: int = 0

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Timings:
        wait = 0 if head.get("wait_ms") is None else get_int(head, "wait_ms", hi=MAX_WAIT_MS)
        return cls(model=get_digest(head, "model"), wait_ms=wait)

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "model": self.model, "wait_ms": self.wait_ms}


@dataclass(frozen=True, slots=True, kw_only=True)
class TimingsOk:
    """§10.11: ``done`` once nothing more will be timed; ``call_ms`` per run set; the
    table itself is the body (:class:`TimingTable`)."""

    KIND: ClassVar[str] = "timings_ok"
    model: str
    done: bool
    call_ms: float
    body_len: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> TimingsOk:
        return cls(
            model=get_digest(head, "model"),
            done=get_bool(head, "done"),
            call_ms=get_number(head, "call_ms", hi=MAX_LAYER_MS),
            body_len=get_body_len(head),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "model": self.model,
            "done": self.done,
            "call_ms": self.call_ms,
            "body_len": self.body_len,
        }


def _valid_ms(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and 0.0 <= value <= MAX_LAYER_MS


@dataclass(frozen=True, slots=True)
class TimingTable:
    """Measured and predicted milliseconds per layer (the body of ``timings_ok``);
    ``rejected``: entries a decoder dropped (§10.11.2)."""

    measured: Mapping[str, float] = field(default_factory=dict)
    predicted: Mapping[str, float] = field(default_factory=dict)
    rejected: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "measured", MappingProxyType(dict(self.measured)))
        object.__setattr__(self, "predicted", MappingProxyType(dict(self.predicted)))

    def encode(self) -> bytes:
        """The canonical JSON body (a server only sends valid entries, §10.11.1)."""
        doc = {"measured": dict(self.measured), "predicted": dict(self.predicted)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, body: bytes, layers: Collection[str]) -> TimingTable:
        """The valid entries of an untrusted body about a model with ``layers``: names of
        that model, finite values in [0, 1e5] ms, a layer counted as measured if both
        maps name it. A body that is not such an object raises :class:`MemberError`."""
        if len(body) > MAX_TIMINGS_BODY:
            raise MemberError("body", f"at most {MAX_TIMINGS_BODY} bytes", len(body))
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise MemberError("body", "a JSON object", body[:40]) from None
        if not isinstance(doc, dict) or set(doc) != {"measured", "predicted"}:
            raise MemberError("body", "an object with 'measured' and 'predicted'", doc)
        known = set(layers)
        kept: dict[str, dict[str, float]] = {}
        rejected = 0
        for part in ("measured", "predicted"):
            table = doc[part]
            if not isinstance(table, dict):
                raise MemberError(f"body.{part}", "an object of layer names to ms", table)
            kept[part] = {}
            for name, ms in table.items():
                if name in known and _valid_ms(ms):
                    kept[part][name] = float(ms)
                else:
                    rejected += 1
        predicted = {n: v for n, v in kept["predicted"].items() if n not in kept["measured"]}
        return cls(kept["measured"], predicted, rejected)
