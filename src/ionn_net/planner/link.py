"""The network link between a client and an edge server, as the planner sees it.

This module owns the link model: uplink and downlink bandwidth (bytes per second),
round-trip time, whether the medium is shared by both directions (Wi-Fi is), and the
compression ratio the transport achieves (raw bytes / bytes on the wire) for weights
and activations, optionally per activation tensor. Everything that turns a byte count
into seconds goes through :meth:`Link.transfer_s` so the planners, the simulator and
the benches agree on one formula.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from ionn_net.errors import PlannerError
from ionn_net.model.graph import TensorRef

__all__ = ["Link"]

_MAX_RATIO = 1000.0


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise PlannerError(f"link {name}: expected a finite number {bound}, got {value!r}")


def _check_ratio(name: str, value: float) -> None:
    if not (
        isinstance(value, int | float) and math.isfinite(value) and 0.01 <= value <= _MAX_RATIO
    ):
        raise PlannerError(
            f"link {name}: expected a compression ratio in [0.01, {_MAX_RATIO:g}], got {value!r}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """A client-server link.

    ``bandwidth`` is the uplink rate in bytes/s, ``down_bandwidth`` the downlink rate
    (defaults to the uplink rate), ``rtt_s`` the round-trip time charged once per
    request. Compression ratios are raw bytes / wire bytes (>1 means smaller on the
    wire); ``tensor_ratios`` overrides ``activation_ratio`` for individual tensors,
    keyed by ``"layer:index"``. ``half_duplex`` says whether a transfer in either
    direction occupies the medium (Wi-Fi) or only its own direction.
    """

    bandwidth: float
    rtt_s: float = 0.0
    down_bandwidth: float | None = None
    weight_ratio: float = 1.0
    activation_ratio: float = 1.0
    tensor_ratios: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)
    half_duplex: bool = True

    def __post_init__(self) -> None:
        _check_positive("bandwidth", self.bandwidth)
        _check_positive("rtt_s", self.rtt_s, allow_zero=True)
        if self.down_bandwidth is not None:
            _check_positive("down_bandwidth", self.down_bandwidth)
        _check_ratio("weight_ratio", self.weight_ratio)
        _check_ratio("activation_ratio", self.activation_ratio)
        if not isinstance(self.tensor_ratios, Mapping):
            raise PlannerError(
                f"link tensor_ratios: expected a mapping, got {type(self.tensor_ratios).__name__}"
            )
        for key, ratio in self.tensor_ratios.items():
            if not isinstance(key, str):
                raise PlannerError(f"link tensor_ratios: expected 'layer:index' keys, got {key!r}")
            _check_ratio(f"tensor_ratios[{key!r}]", ratio)
        object.__setattr__(self, "tensor_ratios", MappingProxyType(dict(self.tensor_ratios)))

    @classmethod
    def from_mbit(cls, mbit_s: float, rtt_ms: float = 0.0, **kwargs: object) -> Link:
        """A symmetric link of ``mbit_s`` megabits per second and ``rtt_ms`` RTT."""
        _check_positive("mbit_s", mbit_s)
        _check_positive("rtt_ms", rtt_ms, allow_zero=True)
        return cls(bandwidth=mbit_s * 1e6 / 8.0, rtt_s=rtt_ms / 1000.0, **kwargs)  # type: ignore[arg-type]

    @property
    def down(self) -> float:
        """Downlink bandwidth in bytes/s."""
        return self.bandwidth if self.down_bandwidth is None else self.down_bandwidth

    def transfer_s(self, nbytes: float, *, ratio: float = 1.0, up: bool = True) -> float:
        """Seconds to move ``nbytes`` raw bytes compressed by ``ratio`` in one direction."""
        if not (math.isfinite(nbytes) and nbytes >= 0):
            raise PlannerError(f"transfer size: expected a finite byte count >= 0, got {nbytes!r}")
        return nbytes / ratio / (self.bandwidth if up else self.down)

    def weight_s(self, nbytes: float) -> float:
        """Uplink seconds for ``nbytes`` raw weight bytes."""
        return self.transfer_s(nbytes, ratio=self.weight_ratio)

    def ratio_of(self, ref: TensorRef) -> float:
        """Compression ratio expected for activation tensor ``ref``."""
        return self.tensor_ratios.get(str(ref), self.activation_ratio)

    def activation_s(self, ref: TensorRef, nbytes: float, *, up: bool = True) -> float:
        """Seconds to move activation ``ref`` of ``nbytes`` raw bytes."""
        return self.transfer_s(nbytes, ratio=self.ratio_of(ref), up=up)

    def ratio_key(self) -> tuple[float, tuple[tuple[str, float], ...]]:
        """Hashable summary of the activation ratios (cache key for byte tables)."""
        return (self.activation_ratio, tuple(sorted(self.tensor_ratios.items())))

    def with_bandwidth(self, bandwidth: float, down_bandwidth: float | None = None) -> Link:
        """The same link at another rate (e.g. after a bandwidth measurement)."""
        return replace(self, bandwidth=bandwidth, down_bandwidth=down_bandwidth)
