"""§10.7-§10.9: ``query``, ``result`` and ``error``.

``tensors`` of ``query`` and ``result`` are kept as received: §9 descriptors are checked
together with the body they describe, by :func:`ionn_net.tensors.decode_tensors` (a
refusal there is ``bad_tensor``), after the checks of the request itself (model, layers,
body length), so that a query is refused for the first thing wrong with it in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ionn_net.errors import IonnError
from ionn_net.messages.members import (
    RequestError,
    get_body_len,
    get_bool,
    get_digest,
    get_int,
    get_layer_list,
    get_number,
    get_optional_layer_list,
    get_str,
)

__all__ = ["Error", "Query", "RemoteError", "Result"]

#: Longest ``message`` of an ``error`` a client accepts.
_MAX_ERROR_TEXT = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """§10.7: run ``run`` on the input ``tensors`` (the body) within ``deadline_ms``.
    ``exact`` (§10.12.5; the member left out when false): run only on exact weights."""

    KIND: ClassVar[str] = "query"
    model: str
    qid: str
    deadline_ms: int
    run: tuple[str, ...]
    tensors: object
    body_len: int
    exact: bool = False

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Query:
        return cls(
            model=get_digest(head, "model"),
            qid=get_str(head, "qid", max_len=64),
            deadline_ms=get_int(head, "deadline_ms", lo=1, hi=3_600_000),
            run=get_layer_list(head, "run"),
            tensors=head.get("tensors"),
            body_len=get_body_len(head),
            exact=get_bool(head, "exact") if "exact" in head else False,
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {
            "m": self.KIND,
            "model": self.model,
            "qid": self.qid,
            "deadline_ms": self.deadline_ms,
            "run": list(self.run),
            "tensors": self.tensors,
            "body_len": self.body_len,
        }
        if self.exact:
            head["exact"] = True
        return head


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """§10.8: the boundary outputs of the query's ``run`` set (the body); ``ran`` in
    execution order and the compute time ``server_ms``. ``ran_base`` (§10.12.5): the
    layers of ``ran`` that ran on base-stage weights; None (absent) for a model that
    declares no stages."""

    KIND: ClassVar[str] = "result"
    qid: str
    ran: tuple[str, ...]
    last: str
    tensors: object
    server_ms: float
    body_len: int
    ran_base: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Result:
        return cls(
            qid=get_str(head, "qid", max_len=64),
            ran=get_layer_list(head, "ran"),
            last=get_str(head, "last", max_len=64),
            tensors=head.get("tensors"),
            server_ms=get_number(head, "server_ms"),
            body_len=get_body_len(head),
            ran_base=get_optional_layer_list(head, "ran_base"),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {
            "m": self.KIND,
            "qid": self.qid,
            "ran": list(self.ran),
            "last": self.last,
            "tensors": self.tensors,
            "server_ms": self.server_ms,
            "body_len": self.body_len,
        }
        if self.ran_base is not None:
            head["ran_base"] = list(self.ran_base)
        return head


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """§10.9: a request refused. ``offset`` is the server's offset (``offset_conflict``,
    §10.5.2), ``layers`` the layers whose blobs are missing (``missing_blobs``, §10.6).
    A client accepts any code (a newer server may add some) and acts on those it knows."""

    KIND: ClassVar[str] = "error"
    code: str
    message: str
    offset: int | None = None
    layers: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Error:
        return cls(
            code=get_str(head, "code", max_len=64),
            message=get_str(head, "message", max_len=_MAX_ERROR_TEXT),
            offset=get_int(head, "offset") if "offset" in head else None,
            layers=get_layer_list(head, "layers") if "layers" in head else None,
        )

    @classmethod
    def of(cls, exc: RequestError) -> Error:
        """The ``error`` answering a refused request."""
        layers = None if exc.layers is None else tuple(exc.layers)
        return cls(code=exc.code, message=str(exc), offset=exc.offset, layers=layers)

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {"m": self.KIND, "code": self.code, "message": self.message}
        if self.offset is not None:
            head["offset"] = self.offset
        if self.layers is not None:
            head["layers"] = list(self.layers)
        return head


class RemoteError(IonnError):
    """The peer answered a request with an ``error`` message (``error`` holds it)."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.code = error.code
        self.message = error.message
