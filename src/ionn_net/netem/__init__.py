"""Link, device and fault emulation for tests and benchmarks of ionn_net.

Submodules (none imports other ionn_net modules except :mod:`ionn_net.errors`):
:mod:`~ionn_net.netem.proxy` userspace shaping proxy, :mod:`~ionn_net.netem.faults`
fault-injection proxy, :mod:`~ionn_net.netem.probe` rate / round-trip probe,
:mod:`~ionn_net.netem.netns` network-namespace links (root),
:mod:`~ionn_net.netem.pktdelay` the packet delay line those links use without netem,
:mod:`~ionn_net.netem.select` backend choice, :mod:`~ionn_net.netem.device` CPU quotas.
Import what you need from the submodules; this package imports none of them.
"""

from __future__ import annotations
