"""The per-run JSON document and the metrics read from it.

Owns the document layout (:data:`SCHEMA`, :func:`check_run_doc`) and the metrics of
the summary table (:func:`run_metrics`), computed the same way for measured queries
and for the simulator's predicted ones:

* **mean latency during upload**: mean latency of the queries issued before the
  upload finished (all queries when the run ended first, or for ``local``, which
  uploads nothing);
* **time to first offloaded query**: issue time of the first query that ran at
  least one layer on the server (and did not fall back);
* **time to complete N queries**: when the N-th query finished (``None`` when the
  run ended before);
* **mean latency in the lossless window** W: of the queries issued before the whole
  model's raw weight bytes could cross the link (its measured upload rate, or the
  configured one): the same span for every strategy of a group, exact or precision-first
  (``bench/planner_sim.py`` compares strategies on it too);
* **mean latency after upload**, upload completion time, counts (and how many queries
  ran on base-stage weights, for the precision-first strategies);
* **client prediction error**: mean absolute percentage error of the latency the
  client predicted for each query's plan against the measured latency.

Times are seconds since the client connected; latencies are milliseconds.

A run document holds: ``schema``, ``scenario``, ``model``, ``strategy``, ``status``
("ok", "skipped", "error"), ``reason``, ``link`` (backend, message, configured and
measured values), ``device`` (what emulated the slow client, configured and measured
factor), ``versions``, ``machine``, ``command``, ``timing``, ``queries`` (issue time,
end time, latency, predicted latency, where each layer ran as ranges of topological
positions, fallback, correctness, mid-query plan switches, the compute time the server
reported per server segment), ``progress`` (upload progress over time), ``logs``,
``plan`` and ``per_layer`` (the simulator's inputs), ``metrics`` and ``prediction``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ionn_net.errors import ConfigError

__all__ = [
    "SCHEMA",
    "QueryPoint",
    "check_run_doc",
    "lossless_window_s",
    "metrics_from_points",
    "query_points",
    "run_metrics",
]

SCHEMA = "ionn-bench/run/1"

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "scenario": dict,
    "model": dict,
    "strategy": str,
    "status": str,
    "link": dict,
    "device": dict,
    "versions": dict,
    "machine": dict,
    "queries": list,
    "progress": list,
    "metrics": dict,
}


@dataclass(frozen=True, slots=True)
class QueryPoint:
    """One query, measured or predicted."""

    issued_s: float
    ended_s: float
    latency_ms: float
    offloaded: bool


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def lossless_window_s(doc: Mapping[str, Any]) -> float | None:
    """W of a run document: its model's raw weight bytes at the link's upload rate (the
    probed one when there is one), or None without either."""
    raw = (doc.get("model") or {}).get("weight_bytes")
    link = doc.get("link") or {}
    probe = (link.get("measured") or {}).get("up") or {}
    rate = probe.get("measured_rate_bps") or (link.get("configured") or {}).get("rate_bps")
    if not raw or not rate:
        return None
    return float(raw) * 8.0 / float(rate)


def metrics_from_points(
    points: Sequence[QueryPoint],
    upload_done_s: float | None,
    *,
    uploads: bool,
    n: int = 100,
    window_s: float | None = None,
) -> dict[str, Any]:
    """The summary metrics of one timeline (see the module docstring)."""
    end = upload_done_s if (uploads and upload_done_s is not None) else math.inf
    during = [p.latency_ms for p in points if p.issued_s < end]
    after = [p.latency_ms for p in points if p.issued_s >= end]
    first = next((p.issued_s for p in points if p.offloaded), None)
    window = [p.latency_ms for p in points if window_s is not None and p.issued_s < window_s]
    return {
        "queries": len(points),
        "mean_ms": _mean([p.latency_ms for p in points]),
        "mean_during_upload_ms": _mean(during),
        "queries_during_upload": len(during),
        "window_s": window_s,
        "mean_in_window_ms": _mean(window),
        "mean_after_upload_ms": _mean(after),
        "first_offloaded_s": first,
        "time_to_n_s": points[n - 1].ended_s if len(points) >= n else None,
        "n": n,
        "upload_done_s": upload_done_s if uploads else None,
        "upload_complete": (upload_done_s is not None) if uploads else None,
    }


def query_points(queries: Sequence[Mapping[str, Any]]) -> list[QueryPoint]:
    return [
        QueryPoint(
            issued_s=float(q["t"]),
            ended_s=float(q["end"]),
            latency_ms=float(q["ms"]),
            offloaded=any(s[0] == "server" and not s[3] for s in q["segments"]),
        )
        for q in queries
    ]


def run_metrics(doc: Mapping[str, Any], *, n: int = 100) -> dict[str, Any]:
    """Metrics of a run document's measured queries."""
    queries = doc.get("queries", [])
    uploads = doc.get("strategy") != "local"
    done = next((float(p["t"]) for p in doc.get("progress", []) if p.get("done")), None)
    window = lossless_window_s(doc)
    out = metrics_from_points(query_points(queries), done, uploads=uploads, n=n, window_s=window)
    # the client's own prediction of each query (its plan's cost) against the latency
    ape = [abs(q["pred_ms"] - q["ms"]) / q["ms"] * 100.0 for q in queries if q.get("pred_ms")]
    out["client_prediction_mape_pct"] = _mean(ape)
    out["fallbacks"] = sum(1 for q in queries if q.get("fallback"))
    out["wrong_outputs"] = sum(1 for q in queries if not q.get("ok", True))
    out["approximate_queries"] = sum(1 for q in queries if not q.get("exact", True))
    out["approximate_in_window"] = sum(
        1 for q in queries if not q.get("exact", True) and window is not None and q["t"] < window
    )
    last = doc.get("progress", [])[-1] if doc.get("progress") else None
    out["uploaded_bytes"] = int(last["sent"]) if last else 0
    out["upload_total_bytes"] = int(last["total"]) if last else 0
    return out


def check_run_doc(doc: object) -> dict[str, Any]:
    """Validate the layout of a run document (keys and types, every query and
    progress entry); returns it, or raises :class:`ConfigError` naming the problem."""
    if not isinstance(doc, dict):
        raise ConfigError(f"run document: expected an object, got {type(doc).__name__}")
    for key, kind in _REQUIRED.items():
        if not isinstance(doc.get(key), kind):
            got = type(doc.get(key)).__name__ if key in doc else "nothing"
            raise ConfigError(f"run document: {key!r} expected {kind}, got {got}")
    if doc["schema"] != SCHEMA:
        raise ConfigError(f"run document: schema expected {SCHEMA!r}, got {doc['schema']!r}")
    if doc["status"] not in ("ok", "skipped", "error"):
        raise ConfigError(f"run document: status expected ok/skipped/error, got {doc['status']!r}")
    last = -math.inf
    for i, q in enumerate(doc["queries"]):
        _check_query(i, q)
        if q["t"] < last:
            raise ConfigError(f"run document: query {i} issued before query {i - 1}")
        last = q["t"]
    for i, p in enumerate(doc["progress"]):
        for key in ("t", "sent", "total", "done"):
            if key not in p:
                raise ConfigError(f"run document: progress {i} expected key {key!r}")
        if not 0 <= p["sent"] <= max(p["total"], 0):
            raise ConfigError(f"run document: progress {i} sent {p['sent']} > total {p['total']}")
    return doc


def _check_query(i: int, q: object) -> None:
    if not isinstance(q, dict):
        raise ConfigError(f"run document: query {i} expected an object")
    for key in ("t", "end", "ms", "segments", "ok", "fallback"):
        if key not in q:
            raise ConfigError(f"run document: query {i} expected key {key!r}")
    if not (q["ms"] > 0 and q["end"] >= q["t"] >= 0):
        raise ConfigError(f"run document: query {i} has impossible times {q}")
    if not q["segments"]:
        raise ConfigError(f"run document: query {i} ran no segment")
    for seg in q["segments"]:
        if (
            not isinstance(seg, list)
            or len(seg) != 4
            or seg[0] not in ("client", "server")
            or not all(isinstance(r, list) and len(r) == 2 and r[0] <= r[1] for r in seg[1])
        ):
            raise ConfigError(f"run document: query {i} has a malformed segment {seg!r}")
