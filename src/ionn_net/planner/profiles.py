"""Client execution-time profiles and their on-disk cache.

This module owns :class:`ClientProfile` (per-layer milliseconds measured on one
device for one model digest), its JSON form, and :class:`ProfileCache`, a directory
of profiles keyed by (model digest, device id). Measuring is the executor's job
(``ionn_net.measure.profile_layers``); this module only stores, validates and looks
up the results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerGraph

__all__ = ["ClientProfile", "ProfileCache"]

_FORMAT = "ionn-profile/1"
_MAX_TEXT = 16 * 1024 * 1024
_MAX_LAYERS = 100_000
_MAX_NAME = 256
_MAX_MS = 1e7
_ID_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")


def _check_id(what: str, value: object) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise PlannerError(
            f"profile {what}: expected 1-128 characters of [A-Za-z0-9_.:@+-], got {value!r}"
        )
    return value


def _check_layer_ms(layer_ms: object) -> dict[str, float]:
    if not isinstance(layer_ms, Mapping):
        raise PlannerError(f"profile layer_ms: expected an object, got {type(layer_ms).__name__}")
    if len(layer_ms) > _MAX_LAYERS:
        raise PlannerError(f"profile layer_ms: at most {_MAX_LAYERS} layers, got {len(layer_ms)}")
    out: dict[str, float] = {}
    for name, ms in layer_ms.items():
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
            raise PlannerError(f"profile layer name: expected 1-{_MAX_NAME} chars, got {name!r}")
        ok = isinstance(ms, int | float) and not isinstance(ms, bool)
        if not (ok and math.isfinite(ms) and 0 <= ms <= _MAX_MS):
            raise PlannerError(
                f"profile layer_ms[{name!r}]: expected a finite ms in [0, {_MAX_MS:g}], got {ms!r}"
            )
        out[name] = float(ms)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientProfile:
    """Per-layer client execution time (ms) of one model on one device."""

    model_digest: str
    device_id: str
    layer_ms: Mapping[str, float] = field(compare=False)
    runs: int = 0

    def __post_init__(self) -> None:
        _check_id("model_digest", self.model_digest)
        _check_id("device_id", self.device_id)
        if not isinstance(self.runs, int) or isinstance(self.runs, bool) or self.runs < 0:
            raise PlannerError(f"profile runs: expected an integer >= 0, got {self.runs!r}")
        object.__setattr__(self, "layer_ms", MappingProxyType(_check_layer_ms(self.layer_ms)))

    @property
    def total_ms(self) -> float:
        return sum(self.layer_ms.values())

    def check_covers(self, graph: LayerGraph) -> None:
        """Raise :class:`PlannerError` unless every layer of ``graph`` has a time."""
        missing = [n for n in graph.order if n not in self.layer_ms]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:5])
            raise PlannerError(
                f"profile {self.model_digest}/{self.device_id}: expected a time for every layer "
                f"of {graph.name!r}, missing {len(missing)} ({shown})"
            )

    def scaled(self, factor: float, device_id: str | None = None) -> ClientProfile:
        """The same profile ``factor`` times slower (device emulation in benches)."""
        if not (math.isfinite(factor) and factor > 0):
            raise PlannerError(f"profile scale: expected a finite factor > 0, got {factor!r}")
        return ClientProfile(
            model_digest=self.model_digest,
            device_id=device_id or self.device_id,
            layer_ms={k: v * factor for k, v in self.layer_ms.items()},
            runs=self.runs,
        )

    def to_json(self) -> str:
        doc = {
            "format": _FORMAT,
            "model_digest": self.model_digest,
            "device_id": self.device_id,
            "runs": self.runs,
            "layer_ms": dict(self.layer_ms),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ClientProfile:
        """Parse and validate (format, known keys, finite bounded numbers)."""
        if len(text) > _MAX_TEXT:
            raise PlannerError(f"profile JSON: expected at most {_MAX_TEXT} bytes, got {len(text)}")
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlannerError(f"profile JSON: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise PlannerError(f"profile JSON: expected an object, got {type(doc).__name__}")
        expected = {"format", "model_digest", "device_id", "runs", "layer_ms"}
        if set(doc) != expected:
            raise PlannerError(
                f"profile JSON: expected keys {sorted(expected)}, got {sorted(map(str, doc))}"
            )
        if doc["format"] != _FORMAT:
            raise PlannerError(f"profile JSON: expected format {_FORMAT!r}, got {doc['format']!r}")
        return cls(
            model_digest=doc["model_digest"],
            device_id=doc["device_id"],
            layer_ms=doc["layer_ms"],
            runs=doc["runs"],
        )


class ProfileCache:
    """A directory of client profiles, one file per (model digest, device id)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(model_digest: str, device_id: str) -> str:
        """File-name-safe key of a (model, device) pair."""
        _check_id("model_digest", model_digest)
        _check_id("device_id", device_id)
        raw = f"{model_digest}\0{device_id}".encode()
        return hashlib.sha256(raw).hexdigest()[:32]

    def path(self, model_digest: str, device_id: str) -> Path:
        return self.directory / f"{self.key(model_digest, device_id)}.profile.json"

    def load(self, model_digest: str, device_id: str) -> ClientProfile | None:
        """The cached profile, or ``None`` when absent, unreadable, invalid or for
        another pair (a stale cache entry is a miss, never an error)."""
        path = self.path(model_digest, device_id)
        try:
            text = path.read_bytes()
            profile = ClientProfile.from_json(text)
        except (OSError, PlannerError):
            return None
        if (profile.model_digest, profile.device_id) != (model_digest, device_id):
            return None
        return profile

    def store(self, profile: ClientProfile) -> Path:
        """Write atomically (temp file + rename) and return the path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(profile.model_digest, profile.device_id)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".profile-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(profile.to_json())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path
