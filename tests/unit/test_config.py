"""Limits (ionn_net.config): defaults of protocol.md §11/§14, validation, announced settings."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ionn_net.config import SETTING_DEFAULTS, SETTING_RANGES, Limits, Setting
from ionn_net.errors import ConfigError


def test_defaults_are_the_documented_values() -> None:
    lim = Limits()
    assert lim.max_frame_size == 65536
    assert lim.max_decoded_frame_size == 1 << 20
    assert lim.max_concurrent_streams == 100
    assert lim.initial_stream_credit == 1 << 20
    assert lim.initial_connection_credit == 16 << 20
    assert lim.max_message_size == 256 << 20
    assert lim.max_settings_entries == 32
    assert lim.max_goaway_debug == 1024
    assert (lim.control_frames_per_window, lim.control_window_s) == (100, 10.0)
    assert (lim.reset_burst, lim.reset_rate_per_s) == (1000, 33.0)
    assert lim.max_queued_control_replies == 64
    assert lim.max_useless_frames == 100
    assert lim.max_outbound_bytes == 8 << 20
    assert (lim.keepalive_interval_s, lim.heartbeat_timeout_s) == (15.0, 30.0)
    assert (lim.handshake_timeout_s, lim.settings_timeout_s, lim.idle_timeout_s) == (10, 10, 120)
    assert (lim.max_tensor_bytes, lim.max_batch) == (64 << 20, 1)


def test_announced_settings_cover_every_setting_with_defaults() -> None:
    assert Limits().settings() == dict(SETTING_DEFAULTS)
    assert set(SETTING_RANGES) == set(Setting)
    for setting, (lo, hi) in SETTING_RANGES.items():
        assert lo <= SETTING_DEFAULTS[setting] <= hi


def test_settings_follow_the_fields() -> None:
    lim = Limits(max_frame_size=1 << 20, max_concurrent_streams=0)
    assert lim.settings()[Setting.MAX_FRAME_SIZE] == 1 << 20
    assert lim.settings()[Setting.MAX_CONCURRENT_STREAMS] == 0
    assert Limits.field_for(Setting.MAX_HEADER_SIZE) == "max_header_size"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_frame_size", 65535),  # below the §11 range
        ("max_frame_size", 1 << 24),
        ("max_decoded_frame_size", 1000),
        ("initial_stream_credit", 2**31),
        ("max_message_size", 2**32),
        ("max_concurrent_streams", -1),
        ("max_chunk", 0),
        ("max_chunk", (1 << 20) + 1),
        ("max_frame_size", True),  # bool is not an int here
        ("max_frame_size", 65536.0),
        ("control_window_s", 0.0),
        ("keepalive_interval_s", math.nan),
        ("min_compression_gain", 1.5),
        ("heartbeat_timeout_s", "30"),
    ],
)
def test_invalid_values_name_field_range_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Limits(**{field: value})  # type: ignore[arg-type]
    text = str(info.value)
    assert f"Limits.{field}" in text
    assert "expected" in text
    assert repr(value) in text or str(value) in text


def test_infinite_timers_are_allowed_and_limits_are_frozen() -> None:
    lim = Limits(idle_timeout_s=math.inf, keepalive_interval_s=math.inf)
    assert lim.idle_timeout_s == math.inf
    with pytest.raises(dataclasses.FrozenInstanceError):
        lim.max_batch = 2  # type: ignore[misc]
    assert dataclasses.replace(lim, max_batch=4).max_batch == 4
