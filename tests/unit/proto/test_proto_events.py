"""proto.events and proto._frozen: events are frozen, slotted, keyword-only and complete."""

from __future__ import annotations

import dataclasses

import pytest

from ionn_net.proto import DataFrame, DataReceived, ErrorCode, StreamReset
from ionn_net.proto import events as ev
from ionn_net.proto._frozen import positional_factory

EVENT_CLASSES = [getattr(ev, name) for name in ev.__all__ if name != "Event"]


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_events_are_frozen_slotted_keyword_only(cls: type) -> None:
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen and "__slots__" in cls.__dict__
    fields = dataclasses.fields(cls)
    assert all(f.kw_only for f in fields)
    assert all(f.default is dataclasses.MISSING for f in fields)  # complete at creation
    if fields:
        with pytest.raises(TypeError):
            cls(*range(len(fields)))  # positional construction is refused


def test_event_values_cannot_change() -> None:
    reset = StreamReset(stream_id=1, error_code=ErrorCode.CANCEL, remote=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        reset.stream_id = 3  # type: ignore[misc]


def test_positional_factory_builds_equal_frozen_instances() -> None:
    make = positional_factory(DataReceived)
    fast = make(5, b"ab", 2, True)
    assert fast == DataReceived(stream_id=5, data=b"ab", wire_length=2, end_stream=True)
    assert type(fast) is DataReceived and hash(fast) == hash(
        DataReceived(stream_id=5, data=b"ab", wire_length=2, end_stream=True)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.data = b""  # type: ignore[misc]
    frame = positional_factory(DataFrame)(1, b"x", 0, 1, False)
    assert frame == DataFrame(stream_id=1, data=b"x")


def test_positional_factory_for_other_arities_checks_the_count() -> None:
    make = positional_factory(ev.GoAwayReceived)
    assert make(3, ErrorCode.NO_ERROR, "bye") == ev.GoAwayReceived(
        last_stream_id=3, error_code=ErrorCode.NO_ERROR, debug="bye"
    )
    with pytest.raises(TypeError, match="expected 3 values"):
        make(3, ErrorCode.NO_ERROR)
