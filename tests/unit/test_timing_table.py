"""ionn_net.messages.timing: the body of ``timings_ok`` is untrusted (protocol.md §10.11.2).

Only entries that name a layer of the model with a finite time in [0, 1e5] ms are kept,
each rejected entry is counted, a layer measured is never also predicted, and a body that
is not the object of §10.11 is refused as a whole.
"""

from __future__ import annotations

import json

import pytest

from ionn_net.messages import MemberError, TimingTable
from ionn_net.messages.timing import MAX_TIMINGS_BODY

LAYERS = ("conv", "relu", "dense")


def test_valid_entries_are_kept_and_round_trip() -> None:
    table = TimingTable({"conv": 1.5}, {"relu": 0.25, "dense": 0.0})
    again = TimingTable.decode(table.encode(), LAYERS)
    assert again == table and again.rejected == 0


@pytest.mark.parametrize(
    "entry",
    [
        {"ghost": 1.0},  # not a layer of the model
        {"conv": -0.5},
        {"conv": 1e5 + 1},
        {"conv": True},
        {"conv": "1.0"},
        {"conv": None},
        {"conv": [1.0]},
    ],
)
def test_invalid_entries_are_dropped_and_counted(entry: dict[str, object]) -> None:
    body = json.dumps({"measured": {**entry, "dense": 2.0}, "predicted": {}}).encode()
    table = TimingTable.decode(body, LAYERS)
    assert dict(table.measured) == {"dense": 2.0} and table.rejected == 1


def test_non_finite_numbers_are_dropped() -> None:
    body = b'{"measured": {"conv": NaN, "relu": Infinity}, "predicted": {"dense": -Infinity}}'
    table = TimingTable.decode(body, LAYERS)
    assert not table.measured and not table.predicted and table.rejected == 3


def test_a_layer_both_measured_and_predicted_counts_as_measured() -> None:
    body = json.dumps({"measured": {"conv": 2.0}, "predicted": {"conv": 9.0}}).encode()
    table = TimingTable.decode(body, LAYERS)
    assert dict(table.measured) == {"conv": 2.0} and not table.predicted


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"measured": {}}',
        b'{"measured": {}, "predicted": {}, "more": {}}',
        b'{"measured": [], "predicted": {}}',
        b"\xff\xfe",
        b" " * (MAX_TIMINGS_BODY + 1),
    ],
)
def test_a_body_that_is_not_the_object_of_section_10_11_is_refused(body: bytes) -> None:
    with pytest.raises(MemberError):
        TimingTable.decode(body, LAYERS)
