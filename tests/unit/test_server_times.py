"""ionn_net.client.server_times: the client's per-layer server times and their sources
(protocol.md §10.10, §10.11): a measured time is never replaced by a prediction, a cost
model brought again by a reconnect does not overwrite what the server timed, and a change
is reported once for re-planning."""

from __future__ import annotations

from ionn_net.client.server_times import ServerTimes
from ionn_net.messages import TimingTable


def test_measured_times_stay_and_reconnects_keep_them() -> None:
    times = ServerTimes({"conv": 1.0, "dense": 2.0})
    times.adopt_model({"conv": 3.0, "dense": 4.0}, "cost_model")
    assert dict(times.ms) == {"conv": 3.0, "dense": 4.0}
    assert set(times.source.values()) == {"cost_model"}
    assert times.adopt_timings(TimingTable({"conv": 0.5}, {"dense": 0.7}), done=False) == 2
    assert times.changed and not times.done
    # a later answer naming a measured layer as predicted does not demote it
    assert times.adopt_timings(TimingTable({}, {"conv": 9.0, "dense": 0.7}), done=True) == 0
    assert times.ms["conv"] == 0.5 and times.source["conv"] == "measured"
    assert times.done
    times.adopt_model({"conv": 3.0, "dense": 4.0}, "cost_model")  # a reconnect's welcome
    assert dict(times.ms) == {"conv": 0.5, "dense": 0.7}
    assert times.source["dense"] == "predicted"
