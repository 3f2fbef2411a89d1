"""Typed errors of ionn_net outside the wire protocol.

Every boundary (layer specs, tensors, graphs, configuration, CLI flags) raises a
subclass of :class:`IonnError` whose message says what was expected and what
arrived. Wire-protocol errors live in :mod:`ionn_net.proto.errors` and also derive
from :class:`IonnError`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ExecutorError",
    "GraphError",
    "IonnError",
    "OffloadError",
    "PlannerError",
    "SpecError",
    "StageDigestError",
    "StageError",
    "StageOrderError",
    "StoreError",
    "TensorError",
    "UnsupportedLayerError",
]


class IonnError(Exception):
    """Base class of every error ionn_net raises on purpose."""


class ConfigError(IonnError, ValueError):
    """A configuration value or CLI flag is out of its documented range."""


class GraphError(IonnError, ValueError):
    """A layer graph is malformed (unknown layer, bad reference, cycle)."""


class SpecError(IonnError, ValueError):
    """A layer spec or weight blob was refused (protocol.md §10.3, §14.5)."""


class StageError(SpecError):
    """A weight stage (a base or refinement of a layer's blob) was refused: unknown
    encoding, wrong size, values a base may not hold, or a layer it cannot apply to."""


class StageOrderError(StageError):
    """A weight stage arrived out of order (a refinement before its base, or twice)."""


class StageDigestError(StageError):
    """A weight stage, or the blob rebuilt from all stages, does not match its SHA-256."""


class UnsupportedLayerError(SpecError):
    """A layer class is outside the allowlist; the client keeps it local."""


class TensorError(IonnError, ValueError):
    """A tensor descriptor or payload was refused (protocol.md §9)."""


class ExecutorError(IonnError):
    """A sub-model could not be built or run."""


class PlannerError(IonnError, ValueError):
    """A planning request cannot be satisfied (e.g. unknown strategy)."""


class StoreError(IonnError):
    """The layer store could not write or verify a blob."""


class OffloadError(IonnError):
    """An offloaded query failed and could not be completed locally."""
