"""The handoff benchmark's network: a client, two edge servers, and the backhaul between them.

Owns :class:`HandoffNet` and its two backends:

* ``netns`` (root): namespaces ``c`` (client), ``a`` and ``b`` (servers) from
  :class:`~ionn_net.netem.topology.Topology`; the client's wireless link to each server is
  ``tbf`` plus a userspace packet delay line (as ``ionn-bench``'s links), the backhaul
  between the servers ``tbf`` at 1 Gbit/s plus a delay line with GSO kept on (64 KiB frames:
  a Python delay line carries 1 Gbit/s that way). The move cuts the client's link to the
  first server (its interface goes down: no FIN, no RST, as when a phone leaves a Wi-Fi).
* ``userspace-proxy``: everything on loopback; each link is a
  :class:`~ionn_net.netem.proxy.ShapingProxy` (the backhaul one too, at 1 Gbit/s); the move
  closes the proxy to the first server.

Both give: where each server listens, how to start a process on each node, the address the
client dials for each server, each server's peer table (protocol.md §15.1: the other server
as clients name it -> where this one reaches it over the backhaul), and the probed links.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from types import TracebackType
from typing import Any

from ionn_net.bench.scenario import LinkConfig
from ionn_net.errors import ConfigError
from ionn_net.netem.netns import environment_problem
from ionn_net.netem.proxy import LinkSpec, ShapingProxy

__all__ = ["BACKHAUL", "HandoffNet"]

#: The backhaul between the two edge servers: 1 Gbit/s each way, 2 ms round trip.
BACKHAUL = LinkConfig(rate_mbit=1000.0, rtt_ms=2.0)
_PORT = 7400
_LOOPBACK = "127.0.0.1"


def _spec(link: LinkConfig) -> LinkSpec:
    return LinkSpec(rate_bps=link.rate_bps, delay_ms=link.delay_ms, jitter_ms=link.jitter_ms,
                    loss=link.loss, queue_ms=link.queue_ms)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((_LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _name(host: str, port: int) -> str:
    return f"{host}:{port}"


class HandoffNet:
    """Async context manager (see the module docstring). ``backend``: "auto" (namespaces
    when root can make them), "netns" or "userspace-proxy"."""

    def __init__(self, wireless: LinkConfig, *, backend: str = "auto") -> None:
        if backend not in ("auto", "netns", "userspace-proxy"):
            raise ConfigError(f"backend: expected auto, netns or userspace-proxy, got {backend!r}")
        problem = environment_problem() if backend != "userspace-proxy" else "asked"
        if backend == "netns" and problem is not None:
            raise ConfigError(f"backend netns: {problem}")
        self.kind = "netns" if problem is None else "userspace-proxy"
        self.why = "" if problem is None else f"network namespaces unavailable ({problem})"
        if backend == "userspace-proxy":
            self.why = "asked for"
        self.wireless = wireless
        self._topo: Any = None
        self._proxies: dict[str, ShapingProxy] = {}
        self._ports = {"a": _PORT, "b": _PORT}
        self.probes: dict[str, Any] = {}

    # -- set-up ----------------------------------------------------------------------------

    async def __aenter__(self) -> HandoffNet:
        try:
            if self.kind == "netns":
                await asyncio.to_thread(self._open_netns)
                self.probes = await asyncio.to_thread(self._probe_netns)
            else:
                self._ports = {"a": _free_port(), "b": _free_port()}
                for server in ("a", "b"):
                    await self._proxy(f"bh-{server}", self._ports[server], BACKHAUL)
                await self.restore()
        except BaseException:
            await self.close()
            raise
        return self

    def _open_netns(self) -> None:
        from ionn_net.netem.topology import LinkDef, Topology

        w, bh = _spec(self.wireless), _spec(BACKHAUL)
        links = [LinkDef("wa", "c", "a", w, w), LinkDef("wb", "c", "b", w, w),
                 LinkDef("bh", "a", "b", bh, bh, gso=True)]  # fmt: skip
        topo = Topology(["c", "a", "b"], links)
        self._topo = topo
        topo.__enter__()

    async def _proxy(self, key: str, port: int, link: LinkConfig) -> None:
        spec = _spec(link)
        proxy = ShapingProxy(_LOOPBACK, port, up=spec, down=spec)
        await proxy.start()
        self._proxies[key] = proxy

    async def close(self) -> None:
        for proxy in self._proxies.values():
            with contextlib.suppress(Exception):
                await proxy.close()
        self._proxies.clear()
        topo, self._topo = self._topo, None
        if topo is not None:
            topo.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what a run needs --------------------------------------------------------------------

    def listen(self, server: str) -> tuple[str, int]:
        """Where server ``a`` or ``b`` listens."""
        host = "0.0.0.0" if self.kind == "netns" else _LOOPBACK
        return host, self._ports[server]

    def prefix(self, node: str) -> list[str]:
        """argv prefix that starts a process on node ``c``, ``a`` or ``b``."""
        return [] if self._topo is None else self._topo.prefix(node)

    def public(self, server: str) -> tuple[str, int]:
        """The address the client dials for server ``a`` or ``b``."""
        if self._topo is not None:
            return self._topo.address(f"w{server}", server), _PORT
        return _LOOPBACK, self._proxies[f"w-{server}"].port

    def peers(self, server: str) -> list[str]:
        """``--peer PUBLIC=BACKHAUL`` values of server ``a`` or ``b``: the other one."""
        other = "b" if server == "a" else "a"
        if self._topo is not None:
            backhaul = _name(self._topo.address("bh", other), _PORT)
        else:
            backhaul = _name(_LOOPBACK, self._proxies[f"bh-{other}"].port)
        return [f"{_name(*self.public(other))}={backhaul}"]

    async def cut(self) -> None:
        """The client leaves the first server's range."""
        if self._topo is not None:
            await asyncio.to_thread(self._topo.set_up, "wa", "c", False)
        elif "w-a" in self._proxies:
            await self._proxies.pop("w-a").close()

    async def restore(self) -> None:
        """The client is back in both servers' range (before each run)."""
        if self._topo is not None:
            await asyncio.to_thread(self._topo.set_up, "wa", "c", True)
            return
        for server in ("a", "b"):
            key = f"w-{server}"
            if key not in self._proxies:
                await self._proxy(key, self._ports[server], self.wireless)

    # -- probing --------------------------------------------------------------------------

    def _probe_netns(self) -> dict[str, Any]:
        """Rate (each way) and round trip of the client's link and of the backhaul."""
        return {
            "wireless": self._probe("wa", "c", "a", self.wireless),
            "backhaul": self._probe("bh", "a", "b", BACKHAUL),
        }

    def _probe(self, link: str, near: str, far: str, config: LinkConfig) -> dict[str, Any]:
        import subprocess

        topo = self._topo
        probe = [sys.executable, "-m", "ionn_net.netem.probe"]
        host = topo.address(link, far)
        server = topo.popen_in(far, [*probe, "serve", "--host", host, "--duration-s", "60"],
                               stdout=subprocess.PIPE)  # fmt: skip
        try:
            port = server.stdout.readline().split()[2]
            out: dict[str, Any] = {}
            for direction in ("up", "down"):
                argv = [*topo.prefix(near), *probe, "client", "--host", host, "--port", port,
                        "--duration-s", "1", "--pings", "10", "--direction", direction,
                        "--configured-rate-bps", str(config.rate_bps),
                        "--configured-rtt-ms", str(config.rtt_ms)]  # fmt: skip
                done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
                doc = json.loads(done.stdout) if done.returncode == 0 else {}
                out[direction] = {
                    "rate_mbit": round(doc.get("measured_rate_bps", 0.0) / 1e6, 1),
                    "rtt_ms": doc.get("rtt_ms_p50"),
                }
            return out
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)
