"""§10.3-§10.6 model messages: ``manifest``/``manifest_ok``, ``have``/``have_ok``,
``blob``/``blob_ok``, ``load``/``load_ok``.

Each is a frozen dataclass with :meth:`parse` and :meth:`to_head`. ``parse`` checks what a
member is without context (types, formats, list lengths); what depends on the receiver's
state (a blob's size in the manifest, the server's limits) is checked by the receiver, with
:func:`~ionn_net.messages.members.bad_member` or
:func:`~ionn_net.messages.members.check_body_len` for the same errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ionn_net.messages.members import (
    MemberError,
    get_body_len,
    get_bool,
    get_choice,
    get_digest,
    get_digest_list,
    get_int,
    get_layer_list,
    get_layer_sets,
    get_number,
    get_offsets,
    get_optional_layer_list,
    get_reasons,
)

__all__ = [
    "LOAD_PRECISIONS",
    "Blob",
    "BlobOk",
    "Have",
    "HaveOk",
    "Holdings",
    "Load",
    "LoadOk",
    "Manifest",
    "ManifestOk",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """§10.3.1: the model's manifest as body; ``model`` is its SHA-256. ``public``
    (§10.3.4): ``True`` marks every blob of the model public, a tuple of layer names the
    blobs of those layers, ``False`` (absent on the wire) none. Whether the names are
    layers of the manifest is checked by the server once it has parsed the body."""

    KIND: ClassVar[str] = "manifest"
    model: str
    body_len: int
    public: bool | tuple[str, ...] = False

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Manifest:
        return cls(
            model=get_digest(head, "model"),
            body_len=get_body_len(head),
            public=_public_marking(head),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {"m": self.KIND, "model": self.model, "body_len": self.body_len}
        if self.public is not False:
            head["public"] = self.public if self.public is True else list(self.public)
        return head


def _public_marking(head: Mapping[str, Any]) -> bool | tuple[str, ...]:
    """§10.3.4: ``public`` is absent, a boolean or a list of layer names."""
    value = head.get("public", False)
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return get_layer_list(head, "public")
    raise MemberError("public", "true, false or a list of layer names", value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Holdings:
    """What the server holds of one model for this session (§10.3.3, §10.4, §14.5):
    ``blobs_held`` this session uploaded; ``blobs_public`` the server holds publicly (a
    catalog or another session's published upload, §14.5.1), which the client need not
    upload. An answer without ``blobs_public`` (a server that predates it) holds none.
    ``layers_base`` (§10.12.4): the ready layers that run on base-stage weights; None
    (the member absent) for a model that declares no stages."""

    blobs_held: tuple[str, ...] = ()
    partial: Mapping[str, int] = field(default_factory=dict)
    layers_ready: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)
    layers_base: tuple[str, ...] | None = None
    blobs_public: tuple[str, ...] = ()

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Holdings:
        return cls(
            blobs_held=get_digest_list(head, "blobs_held"),
            partial=get_offsets(head, "partial"),
            layers_ready=get_layer_list(head, "layers_ready"),
            refused=get_reasons(head, "refused"),
            layers_base=get_optional_layer_list(head, "layers_base"),
            blobs_public=(get_digest_list(head, "blobs_public") if "blobs_public" in head else ()),
        )

    def members(self) -> dict[str, object]:
        out: dict[str, object] = {
            "blobs_held": list(self.blobs_held),
            "partial": dict(self.partial),
            "layers_ready": list(self.layers_ready),
            "refused": dict(self.refused),
            "blobs_public": list(self.blobs_public),
        }
        if self.layers_base is not None:
            out["layers_base"] = list(self.layers_base)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestOk:
    """§10.3.3: the manifest is valid; what the server holds of it for this session."""

    KIND: ClassVar[str] = "manifest_ok"
    model: str
    holdings: Holdings

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> ManifestOk:
        return cls(model=get_digest(head, "model"), holdings=Holdings.parse(head))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "model": self.model, **self.holdings.members()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Have:
    """§10.4: what does the server hold of ``model`` for this session?"""

    KIND: ClassVar[str] = "have"
    model: str

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Have:
        return cls(model=get_digest(head, "model"))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "model": self.model}


@dataclass(frozen=True, slots=True, kw_only=True)
class HaveOk:
    """§10.4: the answer to ``have`` (``refused`` as in ``manifest_ok``)."""

    KIND: ClassVar[str] = "have_ok"
    holdings: Holdings

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> HaveOk:
        return cls(holdings=Holdings.parse(head))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, **self.holdings.members()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Blob:
    """§10.5.1: bytes ``[offset, offset + body_len)`` of the blob ``sha256`` of ``size``
    bytes. ``size`` and ``offset`` are checked against the manifest by the server."""

    KIND: ClassVar[str] = "blob"
    model: str
    sha256: str
    size: int
    offset: int
    body_len: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Blob:
        return cls(
            model=get_digest(head, "model"),
            sha256=get_digest(head, "sha256"),
            size=get_int(head, "size"),
            offset=get_int(head, "offset"),
            body_len=get_body_len(head),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "model": self.model,
            "sha256": self.sha256,
            "size": self.size,
            "offset": self.offset,
            "body_len": self.body_len,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobOk:
    """§10.5.3: the server now holds ``offset`` bytes of the blob; ``complete`` once it
    has verified and stored all of it."""

    KIND: ClassVar[str] = "blob_ok"
    sha256: str
    offset: int
    complete: bool

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> BlobOk:
        return cls(
            sha256=get_digest(head, "sha256"),
            offset=get_int(head, "offset"),
            complete=get_bool(head, "complete"),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "sha256": self.sha256,
            "offset": self.offset,
            "complete": self.complete,
        }


#: §10.12.4: what a ``load`` makes its layers ready at.
LOAD_PRECISIONS = ("exact", "base")


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """§10.6: build ``layers``; compile the run sets in ``prepare`` (the server caps
    their number). ``precision`` (§10.12.4): ``"exact"`` (the default, the member left
    out) or ``"base"`` (layers with declared stages may be built from their base)."""

    KIND: ClassVar[str] = "load"
    model: str
    layers: tuple[str, ...]
    prepare: tuple[tuple[str, ...], ...] = ()
    precision: str = "exact"

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Load:
        return cls(
            model=get_digest(head, "model"),
            layers=get_layer_list(head, "layers"),
            prepare=get_layer_sets(head, "prepare"),
            precision=get_choice(head, "precision", LOAD_PRECISIONS, default="exact"),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {
            "m": self.KIND,
            "model": self.model,
            "layers": list(self.layers),
            "prepare": [list(s) for s in self.prepare],
        }
        if self.precision != "exact":
            head["precision"] = self.precision
        return head


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadOk:
    """§10.6: every layer ready now, the run sets compiled, and how long it took;
    ``layers_base`` as in :class:`Holdings` (§10.12.4)."""

    KIND: ClassVar[str] = "load_ok"
    layers_ready: tuple[str, ...]
    prepared: tuple[tuple[str, ...], ...]
    load_ms: float
    layers_base: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> LoadOk:
        return cls(
            layers_ready=get_layer_list(head, "layers_ready"),
            prepared=get_layer_sets(head, "prepared"),
            load_ms=get_number(head, "load_ms"),
            layers_base=get_optional_layer_list(head, "layers_base"),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {
            "m": self.KIND,
            "layers_ready": list(self.layers_ready),
            "prepared": [list(s) for s in self.prepared],
            "load_ms": self.load_ms,
        }
        if self.layers_base is not None:
            head["layers_base"] = list(self.layers_base)
        return head
