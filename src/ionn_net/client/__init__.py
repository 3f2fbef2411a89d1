"""OffloadClient: collaborative inference while the model uploads (IONN's client).

This package owns the client side of protocol.md §10::

    async with OffloadClient(host, port, model, planner="ours") as client:
        y = await client.infer(x)

On entry the client describes its Keras model (layer graph, safe manifest, weight
blobs), profiles its own per-layer execution times (cached per model and device),
connects, receives the server's cost model and what the server already holds, and
plans the upload with the chosen strategy. A background task then uploads partitions
at low priority (urgency 5, incremental) and asks the server to load each one; every
query (urgency 1) runs with the best execution plan for the layers the server has
*confirmed* ready, and whose compiled slices exist on both sides, so no query pays for
compilation.

Guarantee: :meth:`OffloadClient.infer` returns exactly one result equal to local
execution (within float tolerance) or raises one clear exception. When the server
fails, times out or disconnects during a query, the client finishes the query locally
from the last tensors it has, then reconnects in the background (capped exponential
backoff with jitter) and resumes the upload without re-sending complete layers.

The parts, cut along the client's two loops (both on the application's event loop):

* :mod:`.offload`: :class:`OffloadClient`, the front door (lifecycle, views, progress);
* :mod:`.prepare`: the model prepared and compiled on this device (worker threads);
* :mod:`.plan_state`: :class:`~.plan_state.PlanState`, the one object holding what both
  loops plan with (link, learned costs, the server's readiness, the upload, the active
  plan), changed only through its methods;
* :mod:`.session`: the upload loop (connect, handshake, upload, load, re-plan, reconnect);
* :mod:`.runner`: the query loop (segments, local and remote runs, mid-query join,
  exactly-once local fallback);
* :mod:`.timings`: the server's timings of the model (§10.11), followed during the upload;
* :mod:`.explain`: what the client decided and why (:meth:`OffloadClient.explain`);
* :mod:`.mobility`: moving between servers (grants, fetch, pre-migration, §15);
* :mod:`.types`, :mod:`.progress`: the public value types and the progress feed.
"""

from __future__ import annotations

from ionn_net.client.explain import PlanExplanation, SegmentCost
from ionn_net.client.mobility import HandoffOptions
from ionn_net.client.offload import OffloadClient
from ionn_net.client.plan_state import ActivePlan, PlanState
from ionn_net.client.types import (
    ClientConfig,
    InferenceResult,
    SegmentTiming,
    UploadProgress,
    UploadTimeline,
    paced_transport,
)

__all__ = [
    "ActivePlan",
    "ClientConfig",
    "HandoffOptions",
    "InferenceResult",
    "OffloadClient",
    "PlanExplanation",
    "PlanState",
    "SegmentCost",
    "SegmentTiming",
    "UploadProgress",
    "UploadTimeline",
    "paced_transport",
]
