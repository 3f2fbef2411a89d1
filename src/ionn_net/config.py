"""The one configuration object of ionn_net: every bound of protocol.md §11 and §14.

This module owns :class:`Limits` (frozen, validated at creation) and the wire settings
table of §11 (:class:`Setting`, :data:`SETTING_RANGES`, :data:`SETTING_DEFAULTS`). It has
no dependency on the rest of the package except :mod:`ionn_net.errors`, so every layer
(the sans-I/O core, the asyncio adapter, the server) can import it without cycles.

To add a limit: add a field with a safe default and one entry in ``_RANGES`` (or
``_FLOAT_RANGES``); validation and error messages follow automatically.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

from ionn_net.errors import ConfigError

__all__ = ["SETTING_DEFAULTS", "SETTING_RANGES", "Limits", "Setting"]

KIB = 1024
MIB = 1024 * 1024
U31 = 2**31 - 1
U32 = 2**32 - 1


class Setting(enum.IntEnum):
    """SETTINGS identifiers (protocol.md §11)."""

    MAX_FRAME_SIZE = 0x1
    MAX_DECODED_FRAME_SIZE = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_STREAM_CREDIT = 0x4
    INITIAL_CONNECTION_CREDIT = 0x5
    MAX_HEADER_SIZE = 0x6
    MAX_MESSAGE_SIZE = 0x7


#: Inclusive value range of each setting (§11); a value outside is a PROTOCOL_ERROR.
SETTING_RANGES: Mapping[Setting, tuple[int, int]] = MappingProxyType(
    {
        Setting.MAX_FRAME_SIZE: (65536, 16777215),
        Setting.MAX_DECODED_FRAME_SIZE: (MIB, 64 * MIB),
        Setting.MAX_CONCURRENT_STREAMS: (0, U31),
        Setting.INITIAL_STREAM_CREDIT: (65536, U31),
        Setting.INITIAL_CONNECTION_CREDIT: (65536, U31),
        Setting.MAX_HEADER_SIZE: (65536, MIB),
        Setting.MAX_MESSAGE_SIZE: (MIB, U32),
    }
)

#: Values an endpoint assumes until it has received the peer's SETTINGS (§11.1).
SETTING_DEFAULTS: Mapping[Setting, int] = MappingProxyType(
    {
        Setting.MAX_FRAME_SIZE: 65536,
        Setting.MAX_DECODED_FRAME_SIZE: MIB,
        Setting.MAX_CONCURRENT_STREAMS: 100,
        Setting.INITIAL_STREAM_CREDIT: MIB,
        Setting.INITIAL_CONNECTION_CREDIT: 16 * MIB,
        Setting.MAX_HEADER_SIZE: 65536,
        Setting.MAX_MESSAGE_SIZE: 256 * MIB,
    }
)

# Which Limits field announces which setting.
_SETTING_FIELDS: Mapping[Setting, str] = MappingProxyType(
    {
        Setting.MAX_FRAME_SIZE: "max_frame_size",
        Setting.MAX_DECODED_FRAME_SIZE: "max_decoded_frame_size",
        Setting.MAX_CONCURRENT_STREAMS: "max_concurrent_streams",
        Setting.INITIAL_STREAM_CREDIT: "initial_stream_credit",
        Setting.INITIAL_CONNECTION_CREDIT: "initial_connection_credit",
        Setting.MAX_HEADER_SIZE: "max_header_size",
        Setting.MAX_MESSAGE_SIZE: "max_message_size",
    }
)

# Inclusive ranges of the integer fields that are not settings.
_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        **{name: SETTING_RANGES[s] for s, name in _SETTING_FIELDS.items()},
        "max_json_depth": (1, 256),
        "max_settings_entries": (1, 32),
        "max_goaway_debug": (0, 1024),
        "control_frames_per_window": (1, 1_000_000),
        "max_queued_control_replies": (1, 1_000_000),
        "reset_burst": (1, 1_000_000),
        "max_useless_frames": (0, 1_000_000),
        "max_outbound_bytes": (64 * KIB, 2**40),
        # A DATA frame never exceeds the smallest MAX_DECODED_FRAME_SIZE a peer may announce.
        "max_chunk": (1, MIB),
        "max_stream_credit": (65536, U31),
        "max_connection_credit": (65536, U31),
        "compression_level": (1, 22),
        "max_tensor_bytes": (1, 2**40),
        "max_batch": (1, 1_000_000),
    }
)

# Float fields: (lower bound, lower bound inclusive?, upper bound). math.inf disables a timer.
_FLOAT_RANGES: Mapping[str, tuple[float, bool, float]] = MappingProxyType(
    {
        "control_window_s": (0.0, False, math.inf),
        "reset_rate_per_s": (0.0, False, 1e9),
        "handshake_timeout_s": (0.0, False, math.inf),
        "settings_timeout_s": (0.0, False, math.inf),
        "idle_timeout_s": (0.0, False, math.inf),
        "keepalive_interval_s": (0.0, False, math.inf),
        "heartbeat_timeout_s": (0.0, False, math.inf),
        "min_compression_gain": (0.0, True, 1.0),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Every bound the protocol core enforces (protocol.md §11, §14), with safe defaults.

    Sizes are bytes, durations seconds (``math.inf`` disables a timer). Construction
    validates every field and raises :class:`~ionn_net.errors.ConfigError` naming the field,
    the accepted range and the value received.
    """

    # Announced in SETTINGS (§11); enforced on what we receive.
    max_frame_size: int = 65536
    max_decoded_frame_size: int = MIB
    max_concurrent_streams: int = 100
    initial_stream_credit: int = MIB
    initial_connection_credit: int = 16 * MIB
    max_header_size: int = 65536
    max_message_size: int = 256 * MIB
    # Local framing bounds (§4, §14.1).
    max_json_depth: int = 32
    max_settings_entries: int = 32
    max_goaway_debug: int = 1024
    # Flood budgets (§14.3).
    control_frames_per_window: int = 100
    control_window_s: float = 10.0
    max_queued_control_replies: int = 64
    reset_burst: int = 1000
    reset_rate_per_s: float = 33.0
    max_useless_frames: int = 100
    max_outbound_bytes: int = 8 * MIB
    # Timeouts (§14.4).
    handshake_timeout_s: float = 10.0
    settings_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    keepalive_interval_s: float = 15.0
    heartbeat_timeout_s: float = 30.0
    # Receive-window auto-tuning (§7.3, a receiver policy): a stream's / the connection's
    # credit window doubles, up to these, while the application drains it within about two
    # round trips (proto/flowtune.py). Values at or below the initial credit disable it.
    # Memory per connection stays bounded by max_connection_credit (16 MiB, §14.1).
    max_stream_credit: int = 8 * MIB
    max_connection_credit: int = 16 * MIB
    # Sender behaviour (§8.3, §12.4).
    max_chunk: int = 32768
    compression_level: int = 1
    min_compression_gain: float = 0.05
    # Tensors (§14.2).
    max_tensor_bytes: int = 64 * MIB
    max_batch: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _RANGES:
                _check_int(f.name, value, _RANGES[f.name])
            elif f.name in _FLOAT_RANGES:
                _check_float(f.name, value, _FLOAT_RANGES[f.name])

    def settings(self) -> dict[Setting, int]:
        """The SETTINGS entries this endpoint announces (every setting of §11)."""
        return {s: int(getattr(self, name)) for s, name in _SETTING_FIELDS.items()}

    @staticmethod
    def field_for(setting: Setting) -> str:
        """Name of the field that announces ``setting``."""
        return _SETTING_FIELDS[setting]


def _check_int(name: str, value: object, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    if type(value) is not int:
        raise ConfigError(f"Limits.{name}: expected an int in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"Limits.{name}: expected an int in [{lo}, {hi}], got {value}")


def _check_float(name: str, value: object, bounds: tuple[float, bool, float]) -> None:
    lo, inclusive, hi = bounds
    rng = f"{'[' if inclusive else '('}{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"Limits.{name}: expected a number in {rng}, got {value!r}")
    ok_low = value >= lo if inclusive else value > lo
    if math.isnan(value) or not ok_low or value > hi:
        raise ConfigError(f"Limits.{name}: expected a number in {rng}, got {value!r}")
