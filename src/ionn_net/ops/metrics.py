"""The edge server's Prometheus metrics, behind one small interface.

:class:`ServerMetrics` owns every metric object (``prometheus_client``; its own exposition
format is served by :mod:`ionn_net.ops.http`). The server never touches them: it calls
:class:`~ionn_net.ops.hooks.ServerHooks`, which calls the methods here. A server without
metrics has no :class:`ServerMetrics` at all.

Conventions (Prometheus): base units in names (``_seconds``, ``_bytes``), counters end in
``_total``, latencies are histograms, and every label has a small fixed set of values
(message kinds, protocol.md §10.9 error codes, limit names): never a session, model or
blob digest, nor a peer address.

Several worker processes (``ionn-server --workers``) share one exposition through
``prometheus_client``'s multiprocess mode: the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
for its workers, counters and histograms add up across them, and each gauge says how
(``multiprocess_mode``): live workers' values summed, or the largest.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from ionn_net import __version__
from ionn_net.messages.members import ERROR_CODES
from ionn_net.ops.hooks import ServerGauges

__all__ = ["LIMITS", "MESSAGES", "OUTCOMES", "ServerMetrics"]

#: Request kinds (§10, §15): the ``message`` label; anything else is counted as ``unknown``.
MESSAGES = frozenset(
    {"hello", "auth", "manifest", "have", "blob", "load", "query", "unknown"}
    | {"grant", "redeem", "pull", "fetch", "push", "stage", "stage_blob"}
)
#: The ``outcome`` label: answered, refused with a §10.9 error code, or never answered.
OUTCOMES = frozenset({"ok", "cancelled", *ERROR_CODES})
#: The ``limit`` label of refusals (protocol.md §14, the server's own policy).
LIMITS = frozenset(
    {
        "connections_per_address",
        "sessions",
        "models_per_session",
        "bytes_per_session",
        "queries_per_session",
        "handshake_timeout",
    }
)

#: Request latency: a query on a small model takes milliseconds, a load seconds.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class ServerMetrics:
    """Every metric of one server process, registered in ``registry`` (a fresh one by
    default, so that several servers in one process do not collide)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        if process:  # process_cpu_seconds_total, process_resident_memory_bytes, ...
            ProcessCollector(registry=reg)
        self._requests = Counter(
            "ionn_requests_total",
            "Requests (protocol.md §10) by message kind and outcome: ok, the error code "
            "answered (§10.9), or cancelled (the stream or connection went first).",
            ["message", "outcome"],
            registry=reg,
        )
        self._duration = Histogram(
            "ionn_request_duration_seconds",
            "Time from a request's head to its answer written, by message kind and "
            "whether it was answered ok or with an error.",
            ["message", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self._compute = Histogram(
            "ionn_query_compute_seconds",
            "Server compute time of a query (the server_ms of its result, §10.8).",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self._queued = Histogram(
            "ionn_query_queue_seconds",
            "Time a query waited for an inference slot (its session's and the server's).",
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self._received = Counter(
            "ionn_received_bytes_total",
            "Request body bytes received (decoded), by message kind.",
            ["message"],
            registry=reg,
        )
        self._sent = Counter(
            "ionn_sent_bytes_total",
            "Response body bytes sent (before compression), by message kind.",
            ["message"],
            registry=reg,
        )
        self._blobs = Counter(
            "ionn_blobs_completed_total",
            "Blobs whose upload completed and verified (§10.5.3).",
            registry=reg,
        )
        self._resent = Counter(
            "ionn_blobs_resent_total",
            "Blob messages for a blob the session already held: bytes sent twice.",
            registry=reg,
        )
        self._layers_loaded = Counter(
            "ionn_layers_loaded_total",
            "Layers built by loads (§10.6).",
            registry=reg,
        )
        self._refusals = Counter(
            "ionn_limit_refusals_total",
            "Requests or connections refused by a limit, by limit.",
            ["limit"],
            registry=reg,
        )
        self._auth_failures = Counter(
            "ionn_auth_failures_total",
            "Failed authentications (§10.2.3).",
            registry=reg,
        )
        self._evicted = Counter(
            "ionn_sessions_evicted_total",
            "Idle sessions forgotten to make room for new ones.",
            registry=reg,
        )
        self._aborted = Counter(
            "ionn_drain_aborted_connections_total",
            "Connections still open when a drain's deadline passed (aborted).",
            registry=reg,
        )
        self._connections = Gauge(
            "ionn_connections",
            "Open connections.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._sessions = Gauge(
            "ionn_sessions",
            "Sessions held in memory.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._layers_ready = Gauge(
            "ionn_layers_ready",
            "Layers built and ready to serve queries, over every session's models.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._draining = Gauge(
            "ionn_draining",
            "1 while the server drains (§13.3) before it exits, else 0.",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._store_blobs = Gauge(
            "ionn_store_blobs",
            "Verified blobs in the store, as this server knows it.",
            registry=reg,
            multiprocess_mode="max",
        )
        self._store_bytes = Gauge(
            "ionn_store_bytes",
            "Bytes of those blobs.",
            registry=reg,
            multiprocess_mode="max",
        )
        info = Gauge(
            "ionn_server_info",
            "Always 1; the label says the ionn_net version.",
            ["version"],
            registry=reg,
            multiprocess_mode="max",
        )
        info.labels(version=__version__).set(1)
        for message in ("query", "blob", "load"):  # present at 0 from the first scrape
            self._requests.labels(message=message, outcome="ok")
        for limit in sorted(LIMITS):
            self._refusals.labels(limit=limit)

    # -- events ----------------------------------------------------------------------------

    def request(self, message: str, outcome: str, seconds: float) -> None:
        message = message if message in MESSAGES else "unknown"
        outcome = outcome if outcome in OUTCOMES else "internal"
        self._requests.labels(message=message, outcome=outcome).inc()
        if outcome != "cancelled":
            answer = "ok" if outcome == "ok" else "error"
            self._duration.labels(message=message, outcome=answer).observe(seconds)

    def query_computed(self, queued_s: float, compute_s: float) -> None:
        self._queued.observe(queued_s)
        self._compute.observe(compute_s)

    def received(self, message: str, nbytes: int) -> None:
        self._received.labels(message=message if message in MESSAGES else "unknown").inc(nbytes)

    def sent(self, message: str, nbytes: int) -> None:
        self._sent.labels(message=message if message in MESSAGES else "unknown").inc(nbytes)

    def blob_completed(self) -> None:
        self._blobs.inc()

    def blob_resent(self) -> None:
        self._resent.inc()

    def layers_loaded(self, count: int) -> None:
        self._layers_loaded.inc(count)

    def refused(self, limit: str) -> None:
        if limit in LIMITS:
            self._refusals.labels(limit=limit).inc()

    def auth_failed(self) -> None:
        self._auth_failures.inc()

    def session_evicted(self) -> None:
        self._evicted.inc()

    def drain_aborted(self, connections: int) -> None:
        self._aborted.inc(connections)

    def sample(self, snapshot: ServerGauges) -> None:
        """Set the gauges (a scrape in this process, or a worker's timer)."""
        self._connections.set(snapshot.connections)
        self._sessions.set(snapshot.sessions)
        self._layers_ready.set(snapshot.layers_ready)
        self._draining.set(1 if snapshot.draining else 0)
        if snapshot.store_blobs is not None:
            self._store_blobs.set(snapshot.store_blobs)
        if snapshot.store_bytes is not None:
            self._store_bytes.set(snapshot.store_bytes)
