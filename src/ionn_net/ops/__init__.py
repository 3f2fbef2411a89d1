"""Operating an edge server: metrics, health, logs, graceful drain and worker processes.

* :mod:`.hooks`: what :class:`~ionn_net.server.EdgeServer` reports at each event
  (:class:`ServerHooks`: session-event logs, and metrics when given).
* :mod:`.metrics`: the Prometheus metrics (``prometheus_client``), one small interface.
* :mod:`.http`: the metrics and health endpoints (``/metrics``, ``/v2/health/live``,
  ``/v2/health/ready``) on a port of their own.
* :mod:`.logs`: ``--log-format text|json``.
* :mod:`.run`: one server process (the ``ionn-server`` main): start, serve, drain on SIGTERM.
* :mod:`.workers`: ``--workers N``: a supervisor that accepts connections and hands them to
  N worker processes sharing one store.
"""

from __future__ import annotations

from ionn_net.ops.hooks import ServerGauges, ServerHooks

__all__ = ["ServerGauges", "ServerHooks"]
