"""The emulated link of a scenario, on whichever backend :mod:`ionn_net.netem` offers.

Owns :class:`BenchLink`: choose the backend (:func:`ionn_net.netem.select.choose_backend`:
netem > tbf + userspace packet delay > userspace shaping proxy), build it, verify it
with a short probe in each direction (configured and measured rate and round trip),
and tell the runner where the server listens, how to start a process on either side
and which address the client dials. Everything created is removed on exit, also when
the body raises or is cancelled (Ctrl-C).

* Namespace backends (root): the server runs in namespace ``b``, the client in ``a``
  (``ip netns exec``); the client dials the server's address in ``b`` directly.
* Userspace proxy: both run on loopback; per group of runs a
  :class:`~ionn_net.netem.proxy.ShapingProxy` in this process forwards the client's
  connection to the server's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ionn_net.bench.scenario import LinkConfig
from ionn_net.errors import ConfigError
from ionn_net.netem.base import NetemError
from ionn_net.netem.probe import ProbeResult
from ionn_net.netem.proxy import LinkSpec, ShapingProxy
from ionn_net.netem.select import BACKENDS, choose_backend

__all__ = ["BACKEND_CHOICES", "BenchLink", "LinkReport"]

#: Values of ``--backend``: "auto" or one of netem's backends.
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)
_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class LinkReport:
    """What ran: the backend, the choice message, configured and measured values."""

    backend: str
    message: str
    configured: dict[str, float | None]
    probes: dict[str, ProbeResult]

    def to_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "message": self.message,
            "configured": dict(self.configured),
            "measured": {k: v.to_dict() for k, v in self.probes.items()},
        }

    def measured_rate_bps(self, direction: str) -> float | None:
        probe = self.probes.get(direction)
        return None if probe is None else probe.measured_rate_bps

    def measured_rtt_ms(self) -> float | None:
        rtts = [p.rtt_ms_p50 for p in self.probes.values() if p.rtt_ms_p50 is not None]
        return min(rtts) if rtts else None

    def describe(self) -> list[str]:
        return [p.describe() for p in self.probes.values()]


class BenchLink:
    """Async context manager: one scenario's link, built and probed (see module)."""

    def __init__(
        self,
        config: LinkConfig,
        *,
        backend: str = "auto",
        probe_s: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        if backend not in BACKEND_CHOICES:
            raise ConfigError(f"backend: expected one of {BACKEND_CHOICES}, got {backend!r}")
        self.config = config
        self._prefer = None if backend == "auto" else backend
        self._probe_s = probe_s
        self._seed = seed
        self._netns: Any = None
        self._proxy: ShapingProxy | None = None
        self.kind = ""
        self.message = ""
        self.report: LinkReport | None = None

    # -- set-up and tear-down ------------------------------------------------------------

    def spec(self) -> LinkSpec:
        c = self.config
        return LinkSpec(
            rate_bps=c.rate_bps,
            delay_ms=c.delay_ms,
            jitter_ms=c.jitter_ms,
            loss=c.loss,
            queue_ms=c.queue_ms,
        )

    async def __aenter__(self) -> BenchLink:
        # An explicit --backend is honoured or refused, never silently replaced.
        choice = choose_backend(self._prefer, strict=self._prefer is not None)
        self.kind, self.message = choice.kind, choice.message()
        try:
            if self.kind != "userspace-proxy":
                await self._open_netns()
            probes = await self._probe()
        except BaseException:
            await self.close()
            raise
        c = self.config
        configured = {
            "rate_bps": c.rate_bps,
            "rtt_ms": c.rtt_ms,
            "jitter_ms": c.jitter_ms,
            "loss": c.loss,
            "queue_ms": c.queue_ms,
        }
        self.report = LinkReport(self.kind, self.message, configured, probes)
        return self

    async def _open_netns(self) -> None:
        from ionn_net.netem.netns import NamespaceLink

        spec = self.spec()
        link = NamespaceLink(
            up=spec, down=spec, backend="netem" if self.kind == "netem" else "tbf", seed=self._seed
        )
        self._netns = link
        await asyncio.to_thread(link.__enter__)
        self.kind = str(link.backend)

    async def close(self) -> None:
        await self.detach()
        link, self._netns = self._netns, None
        if link is not None:
            # Synchronous on purpose: this also runs while the loop is being cancelled.
            link.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- probing -------------------------------------------------------------------------

    async def _probe(self) -> dict[str, ProbeResult]:
        out: dict[str, ProbeResult] = {}
        for direction in ("up", "down"):
            if self._netns is not None:
                out[direction] = await asyncio.to_thread(
                    self._netns.probe, direction=direction, duration_s=self._probe_s, pings=20
                )
            else:
                out[direction] = await self._probe_proxy(direction)
        return out

    async def _probe_proxy(self, direction: str) -> ProbeResult:
        """Probe through a proxy in this process, with the probe's two ends in child
        processes: the proxy then has this event loop to itself, as in a real run."""
        spec = self.spec()
        probe = [sys.executable, "-m", "ionn_net.netem.probe"]
        server = await asyncio.create_subprocess_exec(
            *probe, "serve", "--host", _LOOPBACK, "--duration-s", "120",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            line = await asyncio.wait_for(server.stdout.readline(), 30)
            fields = line.decode().split()
            if len(fields) != 3 or fields[0] != "listening":
                raise NetemError(f"probe server did not start: {line!r}")
            async with ShapingProxy(
                _LOOPBACK, int(fields[2]), up=spec, down=spec, seed=self._seed
            ) as proxy:
                argv = [*probe, "client", "--host", _LOOPBACK, "--port", str(proxy.port)]
                argv += ["--duration-s", str(self._probe_s), "--pings", "20"]
                argv += ["--direction", direction, "--backend", self.kind]
                argv += ["--configured-rate-bps", str(spec.rate_bps)]
                argv += ["--configured-rtt-ms", str(2 * spec.delay_ms)]
                client = await asyncio.create_subprocess_exec(
                    *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
                )
                out, err = await asyncio.wait_for(client.communicate(), self._probe_s + 60)
            if client.returncode != 0:
                raise NetemError(f"probe client failed: {err.decode().strip()[-500:]}")
            return ProbeResult(**json.loads(out))
        finally:
            if server.returncode is None:
                server.terminate()
            await asyncio.wait_for(server.wait(), 10)

    # -- what the runner needs -----------------------------------------------------------

    @property
    def server_host(self) -> str:
        """The address the server process listens on."""
        return self._netns.addresses["b"] if self._netns is not None else _LOOPBACK

    def prefix(self, side: str) -> list[str]:
        """argv prefix that starts a process on ``side`` ("server" or "client")."""
        if side not in ("server", "client"):
            raise ConfigError(f"side: expected 'server' or 'client', got {side!r}")
        if self._netns is None:
            return []
        role = "b" if side == "server" else "a"
        return ["ip", "netns", "exec", self._netns.namespaces[role]]

    async def attach(self, server_port: int) -> tuple[str, int]:
        """The address the client dials to reach a server on ``server_port``."""
        if self._netns is not None:
            return self.server_host, server_port
        await self.detach()
        spec = self.spec()
        self._proxy = ShapingProxy(_LOOPBACK, server_port, up=spec, down=spec, seed=self._seed)
        await self._proxy.start()
        return _LOOPBACK, self._proxy.port

    async def detach(self) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            with contextlib.suppress(OSError, NetemError):
                await proxy.close()

    @staticmethod
    def python() -> str:
        return sys.executable
