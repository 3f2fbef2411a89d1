"""Handing a session over from one edge server to the next (protocol.md §15).

* :mod:`.config`: :class:`HandoffConfig` (peer table, grant key, §14.7 limits) and the
  staging tag of a session key;
* :mod:`.grants`: capabilities only their issuer verifies (§15.2);
* :mod:`.peers`: this server's outbound connections to its peers (§15.1);
* :mod:`.source`: the previous server's side (grant, redeem, pull, push);
* :mod:`.target`: the next server's side (fetch, stage, claim);
* :mod:`.staging`: blobs pushed ahead of their client;
* :mod:`.service`: both sides behind one object for the server.
"""

from __future__ import annotations

from ionn_net.handoff.config import HandoffConfig, parse_address, stage_tag

__all__ = ["HandoffConfig", "parse_address", "stage_tag"]
