"""What the edge server reports at each event: :class:`ServerHooks`.

:class:`~ionn_net.server.EdgeServer` calls one method per event (a request answered, a
blob completed, a load, a session welcomed or forgotten, a refusal, a disconnect) and
knows nothing else of logs or metrics. The hooks write the session-event log lines
(INFO: hello/welcome, manifest accepted or refused, blob complete, load, disconnect;
WARNING: every request answered with an error, naming the session by the prefix of its
hash, never its key, and the query id) and, when a :class:`~ionn_net.ops.metrics.
ServerMetrics` is given, update it. Without metrics each event costs a method call and a
log call that the logging level usually filters out.

Every log record carries its fields in ``record.ionn`` (a dict: ``event``, ``session``,
``model``, ``qid``, ...), which ``--log-format json`` writes as JSON members
(:mod:`ionn_net.ops.logs`); the text format shows the message alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # prometheus_client is imported only by a server that has metrics
    from ionn_net.ops.metrics import ServerMetrics

__all__ = ["ServerGauges", "ServerHooks", "short"]

logger = logging.getLogger("ionn_net.server")

#: Requests whose success is a session event worth one INFO line.
_LOGGED_OK = frozenset({"manifest", "load"})


def short(digest: str | None) -> str | None:
    """The prefix that names a session hash or a digest in logs (8 hex digits)."""
    return None if digest is None else digest[:8]


@dataclass(frozen=True, slots=True)
class ServerGauges:
    """What the server holds right now (:meth:`EdgeServer.gauges`), all O(1) to read."""

    connections: int
    sessions: int
    layers_ready: int
    draining: bool
    store_blobs: int | None = None
    store_bytes: int | None = None


class ServerHooks:
    """Logs and (optionally) metrics of one server; see the module docstring."""

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self.metrics = metrics

    @staticmethod
    def _log(level: int, message: str, *args: Any, **fields: Any) -> None:
        if logger.isEnabledFor(level):
            logger.log(level, message, *args, extra={"ionn": fields})

    # -- requests ----------------------------------------------------------------------

    def request_done(
        self,
        message: str,
        outcome: str,
        seconds: float,
        *,
        session: str | None,
        qid: str | None = None,
        detail: str = "",
    ) -> None:
        """A request was answered (``outcome`` "ok" or its §10.9 error code) or never was
        ("cancelled": its stream or connection went first)."""
        if self.metrics is not None:
            self.metrics.request(message, outcome, seconds)
        if outcome == "ok":
            return
        level = logging.INFO if outcome == "cancelled" else logging.WARNING
        self._log(
            level,
            "session %s: %s %s%s: %s",
            short(session),
            message,
            outcome,
            f" ({qid})" if qid else "",
            detail,
            event="request_failed",
            message_kind=message,
            outcome=outcome,
            session=short(session),
            qid=qid,
            seconds=round(seconds, 6),
        )

    def query_computed(self, queued_s: float, compute_s: float) -> None:
        if self.metrics is not None:
            self.metrics.query_computed(queued_s, compute_s)

    def received(self, message: str, nbytes: int) -> None:
        if self.metrics is not None and nbytes:
            self.metrics.received(message, nbytes)

    def sent(self, message: str, nbytes: int) -> None:
        if self.metrics is not None and nbytes:
            self.metrics.sent(message, nbytes)

    # -- session events ----------------------------------------------------------------

    def welcomed(self, session: str, *, new: bool, peer: Any) -> None:
        self._log(
            logging.INFO,
            "session %s: welcome (%s) from %s",
            short(session),
            "new" if new else "resumed",
            peer,
            event="welcome",
            session=short(session),
            new=new,
            peer=str(peer),
        )

    def manifest_accepted(self, session: str, model: str, *, layers: int, held: int) -> None:
        self._log(
            logging.INFO,
            "session %s: manifest %s accepted (%d layers, %d blobs held)",
            short(session),
            short(model),
            layers,
            held,
            event="manifest_accepted",
            session=short(session),
            model=short(model),
            layers=layers,
            blobs_held=held,
        )

    def blob_completed(self, session: str, digest: str, size: int) -> None:
        if self.metrics is not None:
            self.metrics.blob_completed()
        self._log(
            logging.INFO,
            "session %s: blob %s complete (%d bytes)",
            short(session),
            short(digest),
            size,
            event="blob_complete",
            session=short(session),
            blob=digest,
            bytes=size,
        )

    def blob_resent(self, session: str, digest: str) -> None:
        if self.metrics is not None:
            self.metrics.blob_resent()
        self._log(
            logging.INFO,
            "session %s: blob %s sent again although held",
            short(session),
            short(digest),
            event="blob_resent",
            session=short(session),
            blob=digest,
        )

    def loaded(self, session: str, model: str, *, built: int, ready: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.layers_loaded(built)
        self._log(
            logging.INFO,
            "session %s: load of model %s: %d layers built in %.3f s, %d ready",
            short(session),
            short(model),
            built,
            seconds,
            ready,
            event="load",
            session=short(session),
            model=short(model),
            built=built,
            layers_ready=ready,
            seconds=round(seconds, 6),
        )

    def evicted(self, session: str) -> None:
        if self.metrics is not None:
            self.metrics.session_evicted()
        self._log(
            logging.INFO,
            "forgot idle session %s to make room",
            short(session),
            event="session_evicted",
            session=short(session),
        )

    def disconnected(self, session: str | None, peer: Any, error: object) -> None:
        self._log(
            logging.INFO,
            "session %s: disconnect of %s%s",
            short(session),
            peer,
            f" ({error})" if error else "",
            event="disconnect",
            session=short(session),
            peer=str(peer),
            error=str(error) if error else None,
        )

    # -- refusals ----------------------------------------------------------------------

    def refused(self, limit: str, *, session: str | None = None, peer: Any = None) -> None:
        if self.metrics is not None:
            self.metrics.refused(limit)
        self._log(
            logging.WARNING,
            "refused by the %s limit (session %s, peer %s)",
            limit,
            short(session),
            peer,
            event="limit_refusal",
            limit=limit,
            session=short(session),
            peer=None if peer is None else str(peer),
        )

    def auth_failed(self, peer: Any, why: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failed()
        self._log(
            logging.WARNING,
            "authentication failed from %s: %s",
            peer,
            why,
            event="auth_failed",
            peer=str(peer),
        )

    # -- lifecycle ---------------------------------------------------------------------

    def drained(self, seconds: float, aborted: int) -> None:
        if self.metrics is not None and aborted:
            self.metrics.drain_aborted(aborted)
        self._log(
            logging.WARNING if aborted else logging.INFO,
            "drained in %.2f s; %d connections aborted at the deadline",
            seconds,
            aborted,
            event="drained",
            seconds=round(seconds, 3),
            aborted=aborted,
        )

    def sample(self, gauges: ServerGauges) -> None:
        if self.metrics is not None:
            self.metrics.sample(gauges)
