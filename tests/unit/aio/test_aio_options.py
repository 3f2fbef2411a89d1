"""Unit tests of ionn_net.aio.options and ionn_net.aio.loop."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from ionn_net.aio import (
    ENV_NO_UVLOOP,
    PacingConfig,
    TransportOptions,
    new_event_loop,
    run,
    uvloop_wanted,
)
from ionn_net.errors import ConfigError

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("notsent_lowat", 0),
        ("write_high_water", -1),
        ("write_low_water", 1 << 30),
        ("read_budget", 0),
        ("stall_timeout_s", 0.0),
        ("close_timeout_s", float("nan")),
        ("send_chunk", 1.5),
        ("congestion", "x" * 16),
        ("congestion", ""),
    ],
)
def test_transport_options_validate(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        TransportOptions(**{field: value})  # type: ignore[arg-type]


def test_transport_options_defaults_are_small_buffers() -> None:
    options = TransportOptions()
    assert options.notsent_lowat == 128 * 1024
    assert options.write_high_water <= 64 * 1024


def test_congestion_auto_is_cubic_only_under_pacing() -> None:
    # BBR's ProbeRTT stalls a paced connection's queries (options docstring); unpaced
    # connections keep the host's choice.
    assert TransportOptions().congestion_to_set is None
    paced = TransportOptions(pacing=PacingConfig(rate_bps=1e6))
    assert paced.congestion_to_set == "cubic"
    assert TransportOptions(pacing=PacingConfig(), congestion=None).congestion_to_set is None
    assert TransportOptions(pacing=PacingConfig(), congestion="reno").congestion_to_set == "reno"
    assert TransportOptions(congestion="bbr").congestion_to_set == "bbr"


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed")
def test_uvloop_by_default_and_env_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_NO_UVLOOP, raising=False)
    assert uvloop_wanted()
    loop = new_event_loop()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    monkeypatch.setenv(ENV_NO_UVLOOP, "1")
    assert not uvloop_wanted()
    loop = new_event_loop()
    try:
        assert not type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_run_honours_the_flag() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert not run(loop_module(), uvloop=False).startswith("uvloop")
