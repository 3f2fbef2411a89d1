"""The simulator's inputs as the run itself measured them, under the run's own isolation.

Owns :func:`measured_inputs`. The server's cost model is calibrated once on small models
(its per-layer error is large, BENCHMARKS.md) and the machine's load changes between
calibration and run, so replaying a run with the announced costs tests the cost model
more than the simulator. Every input here comes from what the same run recorded, each
for one mechanism the simulator charges:

* ``exec_scale``: the server's real speed: median over server segments run while the
  server's loader was idle of the compute time the server reported (§10.7) over the cost
  model's prediction for the same layers;
* ``loader_slowdown``: server contention: the same ratio for segments that overlapped a
  load (build and compile of a partition, §10.6) over ``exec_scale`` (the loader's
  threads and the query threads share the server's CPU);
* ``load_scale``: the loads' real duration: the server's own ``load_ms`` of every load
  over what the cost model predicts for the layers loaded (plus its per-partition
  overhead);
* ``pace``: the rate the client's pacer let the upload go at over time (aio.pacing: the
  upload never exceeds it), as the simulator's link changes during the upload.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ionn_net.planner.link import Link

__all__ = ["MeasuredInputs", "measured_inputs"]

#: Fewer samples than this and a ratio is not trusted (1.0 is used).
_MIN_SAMPLES = 3
#: A new pacing rate becomes a link change when it moved by more than this fraction ...
_PACE_MOVE = 0.1
#: ... and at least this long after the previous change.
_PACE_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class MeasuredInputs:
    exec_scale: float = 1.0
    loader_slowdown: float = 1.0
    load_scale: float = 1.0
    pace: tuple[tuple[float, float], ...] = ()  # (time s, upload bytes/s)
    samples: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "exec_scale": self.exec_scale,
            "loader_slowdown": self.loader_slowdown,
            "load_scale": self.load_scale,
            "pace_mbit": [[round(t, 3), round(b * 8e-6, 3)] for t, b in self.pace],
            "samples": dict(self.samples or {}),
        }

    def link_changes(self, link: Link) -> list[tuple[float, Link]]:
        """The pacing rate over time as the upload's link (never above the probed one)."""
        out: list[tuple[float, Link]] = []
        for t, rate in self.pace:
            if t > 0 and (not out or t > out[-1][0]):
                out.append((t, replace(link, bandwidth=min(link.bandwidth, rate))))
        return out


def _segment_ratios(
    doc: Mapping[str, Any], spans: Sequence[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """(ratios while the loader was idle, ratios overlapping a load) of server segments:
    reported compute over the cost model's prediction."""
    order = doc["model"]["layer_order"]
    predicted = doc["per_layer"]["server_ms"]
    idle: list[float] = []
    loading: list[float] = []
    for q in doc["queries"]:
        segs = [s for s in q["segments"] if s[0] == "server"]
        for seg, ms in zip(segs, q.get("server_ms") or (), strict=False):
            if ms is None or seg[3]:
                continue
            names = [order[i] for a, b in seg[1] for i in range(a, b + 1)]
            pred = sum(float(predicted.get(n, 0.0)) for n in names)
            if pred <= 0.05 or ms <= 0:
                continue
            busy = any(a < q["end"] and q["t"] < b for a, b in spans)
            (loading if busy else idle).append(ms / pred)
    return idle, loading


def _load_scale(doc: Mapping[str, Any], layers: Sequence[str], overhead_ms: float) -> float:
    loads = (doc.get("timing") or {}).get("loads") or []
    if not loads or not layers:
        return 1.0
    per_layer = doc["per_layer"]["load_ms"]
    mean_layer = statistics.fmean(float(per_layer.get(n, 0.0)) for n in layers)
    predicted = sum(int(n) * mean_layer + overhead_ms for _, _, n, _ in loads)
    measured = sum(float(ms) for _, _, _, ms in loads)
    return measured / predicted if predicted > 0 and measured > 0 else 1.0


def _pace(doc: Mapping[str, Any]) -> tuple[tuple[float, float], ...]:
    out: list[tuple[float, float]] = []
    done = doc["metrics"].get("upload_done_s")
    for p in doc.get("progress") or ():
        mbit = p.get("pace_mbit")
        if mbit is None or mbit <= 0 or (done is not None and p["t"] > done):
            continue
        rate = float(mbit) * 1e6 / 8.0
        if out and (
            abs(rate / out[-1][1] - 1) <= _PACE_MOVE or p["t"] - out[-1][0] < _PACE_EVERY_S
        ):
            continue
        out.append((float(p["t"]), rate))
    return tuple(out)


def measured_inputs(
    doc: Mapping[str, Any], layers: Sequence[str], overhead_ms: float
) -> MeasuredInputs:
    """What the run measured (see the module docstring); ``layers``: the planned ones."""
    loads = (doc.get("timing") or {}).get("loads") or []
    spans = [(float(a), float(b)) for a, b, _, _ in loads if a is not None and b is not None]
    idle, loading = _segment_ratios(doc, spans)
    both = idle + loading
    exec_scale = statistics.median(idle if len(idle) >= _MIN_SAMPLES else both or [1.0])
    slowdown = 1.0
    if len(loading) >= _MIN_SAMPLES and len(idle) >= _MIN_SAMPLES:
        slowdown = max(1.0, statistics.median(loading) / exec_scale)
    return MeasuredInputs(
        exec_scale=exec_scale,
        loader_slowdown=slowdown,
        load_scale=_load_scale(doc, layers, overhead_ms),
        pace=_pace(doc),
        samples={"idle_segments": len(idle), "loading_segments": len(loading)},
    )
