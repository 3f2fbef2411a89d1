"""Configured against measured, for every link-emulation backend that runs here.

For each backend the same probe (ionn_net.netem.probe: ~1 s bulk transfer measured by
the receiver, 64-byte ping-pongs while idle) runs through the emulated link and over
bare loopback (the baseline of the same run). Printed per row: configured rate and
round trip, measured goodput and p50 round trip, their ratio / error, and the bare
loopback figures they are compared against. Then the CPU-quota slowdown of a short
CPU-bound probe (wall time / own CPU time, and against an unthrottled run).

Rows that need root (namespace links, cgroups) are skipped with the reason.
Usage: ``python bench/netem_links.py [--duration 1.0]``.
"""

from __future__ import annotations

import argparse
import asyncio

from ionn_net.netem.device import measure_slowdown
from ionn_net.netem.netns import NamespaceLink
from ionn_net.netem.probe import ProbeResult, ProbeServer, probe_link
from ionn_net.netem.proxy import LinkSpec, ShapingProxy
from ionn_net.netem.select import backend_problems, choose_backend


def _row(result: ProbeResult, base: ProbeResult) -> str:
    ratio = result.rate_ratio()
    err = result.rtt_error_ms()
    rate = (result.measured_rate_bps or 0) / 1e6
    return (
        f"{result.backend:<16} {(result.configured_rate_bps or 0) / 1e6:>7.1f} "
        f"{rate:>9.2f} {'-' if ratio is None else f'{ratio:.3f}':>6} "
        f"{result.configured_rtt_ms or 0:>7.1f} {result.rtt_ms_p50 or 0:>8.2f} "
        f"{'-' if err is None else f'{err:+.2f}':>7}   "
        f"loopback {(base.measured_rate_bps or 0) / 1e6:>7.0f} Mbit/s {base.rtt_ms_p50:.2f} ms"
    )


async def _proxy_rows(duration: float) -> list[str]:
    rows = []
    async with ProbeServer() as server:
        base = await probe_link("127.0.0.1", server.port, duration_s=duration, pings=20)
        for rate, delay in ((10e6, 20.0), (50e6, 20.0), (100e6, 5.0)):
            spec = LinkSpec(rate_bps=rate, delay_ms=delay)
            async with ShapingProxy("127.0.0.1", server.port, up=spec, down=spec) as px:
                result = await probe_link(
                    "127.0.0.1",
                    px.port,
                    duration_s=duration,
                    pings=20,
                    backend="userspace-proxy",
                    configured_rate_bps=rate,
                    configured_rtt_ms=2 * delay,
                )
            rows.append(_row(result, base))
    return rows


def _netns_rows(duration: float, base: ProbeResult) -> list[str]:
    rows = []
    for rate, delay in ((20e6, 0.0), (100e6, 0.0), (50e6, 10.0), (100e6, 10.0)):
        with NamespaceLink(rate_bps=rate, delay_ms=delay) as link:
            rows.append(_row(link.probe(duration_s=duration, pings=20), base))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=1.0, help="seconds of bulk per probe")
    args = parser.parse_args()
    print(choose_backend().message())
    print(
        f"{'backend':<16} {'rate':>7} {'measured':>9} {'ratio':>6} {'rtt':>7} {'rtt p50':>8} "
        f"{'error':>7}   (Mbit/s, ms)"
    )
    for row in asyncio.run(_proxy_rows(args.duration)):
        print(row)
    problems = backend_problems()
    if problems["tbf+pktdelay"] is None:

        async def bare() -> ProbeResult:
            async with ProbeServer() as server:
                return await probe_link("127.0.0.1", server.port, duration_s=args.duration)

        for row in _netns_rows(args.duration, asyncio.run(bare())):
            print(row)
    else:
        print(f"namespace links skipped: {problems['tbf+pktdelay']}")
    for quota in (0.05, 0.2):
        s = measure_slowdown(quota, period_us=20_000)
        if not s.measured:
            print(f"cpu quota {quota}: not measured ({s.emulation.where}); factor {s.slowdown}")
            continue
        print(
            f"cpu quota {quota:.2f} ({s.emulation.kind}): expected x{s.emulation.factor:.1f}, "
            f"vs unthrottled cpu x{s.slowdown:.1f}, vs unthrottled wall x{s.slowdown_wall:.1f}, "
            f"own wall/cpu x{s.slowdown_cpu:.1f} (unthrottled {s.baseline_cpu_s * 1000:.0f} ms cpu "
            f"/ {s.baseline_wall_s * 1000:.0f} ms wall -> {s.throttled_wall_s * 1000:.0f} ms wall)"
        )


if __name__ == "__main__":
    main()
