"""The simulator's inputs as the run itself measured them, under the run's own isolation.

Owns :func:`measured_inputs`. The server's cost model is calibrated once on small models
(its per-layer error is large, BENCHMARKS.md) and the machine's load changes between
calibration and run, so replaying a run with the announced costs tests the cost model
more than the simulator. Every input here comes from what the same run recorded, each
for one mechanism the simulator charges (a speed is a median, robust to the odd slow
call; an extra time a mean, since it is charged to predict a mean latency):

* ``exec_scale``: the server's real speed: median over server segments run while the
  server's loader was idle of the compute time the server reported (§10.7) over the cost
  model's prediction for the same layers;
* ``loader_extra_s``: server contention: the mean of the compute time the server reported
  for segments that overlapped a load (build and compile of a partition, §10.6) minus
  what ``exec_scale`` predicts for them (the loader's threads and the query's share the
  server's CPU and interpreter: measured, the extra hardly depends on the segment's
  size, 10-180 ms for ResNet50 segments of 50-149 layers);
* ``load_s``: the server's own ``load_ms`` of each load, in order (the simulator's loader
  takes waiting partitions together as the client does, so its loads match the run's
  when its timeline does); for loads past these, ``load_scale``: all loads' ``load_ms``
  over what the cost model predicts for the layers loaded (plus its per-load overhead);
* ``activation_s``: the client's compile time for the plan of each load, in order
  (TensorFlow traces its side of the new plan before queries switch to it);
* ``client_extra_s``: client contention: the mean, over queries run entirely on the
  client while the upload was not over, of their latency minus the client profile's
  (the upload's own work on the client, compressing and framing blobs, planning and
  compiling, shares the CPU with them);
* ``pace``: the rate the client's pacer let the upload go at over time (aio.pacing: the
  upload never exceeds it), as the simulator's link changes during the upload.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    loader_extra_s: float = 0.0
    load_scale: float = 1.0
    load_s: tuple[float, ...] = ()
    pace: tuple[tuple[float, float], ...] = ()  # (time s, upload bytes/s)
    activation_s: tuple[float, ...] = ()
    client_extra_s: float = 0.0
    samples: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "exec_scale": self.exec_scale,
            "loader_extra_s": self.loader_extra_s,
            "load_scale": self.load_scale,
            "load_s": [round(v, 4) for v in self.load_s],
            "activation_s": [round(a, 4) for a in self.activation_s],
            "client_extra_s": self.client_extra_s,
            "pace_mbit": [[round(t, 3), round(b * 8e-6, 3)] for t, b in self.pace],
            "samples": dict(self.samples or {}),
        }


def _segments(
    doc: Mapping[str, Any], spans: Sequence[tuple[float, float]], order: Sequence[str]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(segments while the loader was idle, segments overlapping a load) as (cost model's
    prediction, reported compute) milliseconds; ``order``: the layers by position."""
    predicted = doc["per_layer"]["server_ms"]
    idle: list[tuple[float, float]] = []
    loading: list[tuple[float, float]] = []
    for q in doc.get("queries") or ():
        segs = [s for s in q["segments"] if s[0] == "server"]
        for seg, ms in zip(segs, q.get("server_ms") or (), strict=False):
            if ms is None or seg[3]:
                continue
            names = [order[i] for a, b in seg[1] for i in range(a, b + 1)]
            pred = sum(float(predicted.get(n, 0.0)) for n in names)
            if pred <= 0.05 or ms <= 0:
                continue
            busy = any(a < q["end"] and q["t"] < b for a, b in spans)
            (loading if busy else idle).append((pred, float(ms)))
    return idle, loading


def _client_extra_s(doc: Mapping[str, Any]) -> float:
    done = doc["metrics"].get("upload_done_s")
    if done is None or doc.get("strategy") == "local":
        return 0.0
    local_ms = sum(float(v) for v in doc["per_layer"]["client_ms"].values())
    extra = [
        float(q["ms"]) - local_ms
        for q in doc.get("queries") or ()
        if q["t"] < done and not any(s[0] == "server" for s in q["segments"])
    ]
    if len(extra) < _MIN_SAMPLES:
        return 0.0
    return max(0.0, statistics.fmean(extra)) / 1000.0


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
    doc: Mapping[str, Any],
    order: Sequence[str],
    partitions: Sequence[Sequence[str]],
    overhead_ms: float,
) -> MeasuredInputs:
    """What the run measured (see the module docstring); ``order``: the model's layers by
    position, ``partitions``: those the run uploaded."""
    layers = [n for p in partitions for n in p]
    loads = (doc.get("timing") or {}).get("loads") or []
    spans = [(float(a), float(b)) for a, b, _, _ in loads if a is not None and b is not None]
    idle, loading = _segments(doc, spans, order)
    both = idle + loading
    ratios = [ms / pred for pred, ms in (idle if len(idle) >= _MIN_SAMPLES else both)]
    exec_scale = statistics.median(ratios or [1.0])
    extra = 0.0
    if len(loading) >= _MIN_SAMPLES and len(idle) >= _MIN_SAMPLES:
        extra = max(0.0, statistics.fmean(ms - pred * exec_scale for pred, ms in loading))
    load_s: tuple[float, ...] = ()
    if loads and len(loads) <= len(partitions):
        load_s = tuple(float(ms) / 1000.0 for _, _, _, ms in loads)
    return MeasuredInputs(
        exec_scale=exec_scale,
        loader_extra_s=extra / 1000.0,
        load_scale=_load_scale(doc, layers, overhead_ms),
        load_s=load_s,
        pace=_pace(doc),
        client_extra_s=_client_extra_s(doc),
        activation_s=tuple(
            max(0.0, float(b) - float(a))
            for a, b in (doc.get("timing") or {}).get("activations") or ()
            if a is not None and b is not None
        ),
        samples={"idle_segments": len(idle), "loading_segments": len(loading)},
    )
