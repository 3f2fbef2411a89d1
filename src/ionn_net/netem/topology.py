"""Several network namespaces joined by emulated point-to-point links (root only).

Owns :class:`Topology`: named nodes (one namespace each) and :class:`LinkDef` links between
pairs of them, each a /30 of its own with its own rate, delay, jitter and loss per direction,
built like :class:`~ionn_net.netem.netns.NamespaceLink`'s ``tbf+pktdelay`` backend: ``tbf``
on both ends limits the rate (the kernel's own bottleneck, pushing back on TCP), and when a
direction has a delay, jitter or loss, a middle namespace carries the frames through two
:mod:`ionn_net.netem.pktdelay` processes. The handoff benchmark uses it for a client, two
edge servers and the backhaul between them; :meth:`Topology.set_up` brings a link down and
up again (the client leaving an access point's range).

Namespaces are ``ionn-<pid>-<n>-<node>`` (``...-m<k>`` for middles), so
:func:`~ionn_net.netem.netns.cleanup_stale` removes what a killed process left. Everything
created is removed by :meth:`Topology.close`, also when building fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from ionn_net.errors import ConfigError
from ionn_net.netem.base import BackendUnavailableError, NetemError
from ionn_net.netem.netns import PREFIX, environment_problem, receive_in_order
from ionn_net.netem.proxy import LinkSpec

__all__ = ["LinkDef", "Topology"]

_TIMEOUT_S = 20.0
_counter = itertools.count()


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetemError(f"{' '.join(argv)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise NetemError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True, slots=True)
class LinkDef:
    """A link between nodes ``a`` and ``b`` on subnet ``10.<net>.<k>.0/30`` (``a`` is .1,
    ``b`` .2). ``up`` is the direction a -> b. ``gso``: keep segmentation offload (a fast
    link carries 64 KiB frames through its delay line); off, packets are wire-sized."""

    name: str
    a: str
    b: str
    up: LinkSpec
    down: LinkSpec
    gso: bool = False


class Topology:
    """Context manager: the namespaces and links (see the module docstring)."""

    def __init__(self, nodes: Sequence[str], links: Sequence[LinkDef], *, net: int = 201) -> None:
        names = list(nodes)
        if len(set(names)) != len(names) or not names:
            raise ConfigError(f"topology nodes: expected distinct names, got {names!r}")
        for link in links:
            if link.a not in names or link.b not in names or link.a == link.b:
                raise ConfigError(f"link {link.name}: expected two distinct nodes of {names}")
        if not 1 <= net <= 254 or len(links) > 60:
            raise ConfigError("topology: expected net 1..254 and at most 60 links")
        self.nodes = names
        self.links = list(links)
        self._net = net
        self._base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.namespaces: dict[str, str] = {}
        #: (link name, node) -> (interface, address)
        self.ends: dict[tuple[str, str], tuple[str, str]] = {}
        self._procs: list[subprocess.Popen[str]] = []

    # -- set-up --------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        problem = environment_problem()
        if problem is not None:
            raise BackendUnavailableError(f"Topology: {problem}")
        try:
            for node in self.nodes:
                self._namespace(node)
            for k, link in enumerate(self.links):
                self._build(k, link)
        except BaseException:
            self.close()
            raise
        return self

    def _namespace(self, role: str) -> str:
        name = f"{self._base}-{role}"
        _run(["ip", "netns", "add", name])
        self.namespaces[role] = name
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def _build(self, k: int, link: LinkDef) -> None:
        na, nb = self.namespaces[link.a], self.namespaces[link.b]
        dev_a, dev_b = f"l{k}{link.b[:6]}", f"l{k}{link.a[:6]}"  # named by the far end
        shaped = any(s.delay_ms or s.jitter_ms or s.loss for s in (link.up, link.down))
        if shaped:
            mid = self._namespace(f"m{k}")
            _veth(na, dev_a, mid, "ma")
            _veth(nb, dev_b, mid, "mb")
            for dev in ("ma", "mb"):
                _run(["ip", "-n", mid, "link", "set", "dev", dev, "promisc", "on"])
                _run(["ip", "-n", mid, "link", "set", "dev", dev, "up"])
        else:
            _veth(na, dev_a, nb, dev_b)
        for node, ns, dev, host in ((link.a, na, dev_a, 1), (link.b, nb, dev_b, 2)):
            address = f"10.{self._net}.{k}.{host}"
            _run(["ip", "-n", ns, "addr", "add", f"{address}/30", "dev", dev])
            if not link.gso:  # wire-sized packets: one loss is one packet (see netns)
                _run(["ip", "-n", ns, "link", "set", "dev", dev, "gso_max_size", "1500",
                      "gso_max_segs", "1"])  # fmt: skip
            _run(["ip", "-n", ns, "link", "set", "dev", dev, "up"])
            receive_in_order(ns, dev)
            self.ends[(link.name, node)] = (dev, address)
        _tbf(na, dev_a, link.up)
        _tbf(nb, dev_b, link.down)
        if shaped:
            self._delay_line(f"m{k}", "ma", "mb", link.up)
            self._delay_line(f"m{k}", "mb", "ma", link.down)

    def _delay_line(self, role: str, src: str, dst: str, spec: LinkSpec) -> None:
        argv = [sys.executable, "-m", "ionn_net.netem.pktdelay", "--src", src, "--dst", dst]
        argv += ["--delay-ms", str(spec.delay_ms), "--jitter-ms", str(spec.jitter_ms)]
        argv += ["--loss", str(spec.loss), "--max-bytes", str(64 << 20)]
        proc = self.popen_in(role, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            raise NetemError(f"pktdelay {src}->{dst} in {role} did not start: {line!r}")

    # -- use -----------------------------------------------------------------------------

    def address(self, link: str, node: str) -> str:
        """The address of ``node`` on ``link``."""
        try:
            return self.ends[(link, node)][1]
        except KeyError:
            raise ConfigError(f"no end of link {link!r} at node {node!r}") from None

    def prefix(self, node: str) -> list[str]:
        """argv prefix that runs a command in ``node``'s namespace."""
        if node not in self.namespaces:
            raise ConfigError(f"node: expected one of {sorted(self.namespaces)}, got {node!r}")
        return ["ip", "netns", "exec", self.namespaces[node]]

    def popen_in(self, node: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start ``argv`` in ``node``'s namespace; it is stopped when the topology closes."""
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            [*self.prefix(node), *argv], text=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def set_up(self, link: str, node: str, up: bool) -> None:
        """Bring ``node``'s end of ``link`` down (nothing passes; no FIN, no RST: the far
        end learns nothing) or up again."""
        dev = self.ends[(link, node)][0]
        _run(["ip", "-n", self.namespaces[node], "link", "set", "dev", dev,
              "up" if up else "down"])  # fmt: skip

    def interface_bytes(self, link: str, node: str) -> tuple[int, int]:
        """(received, sent) bytes of ``node``'s end of ``link`` so far."""
        dev = self.ends[(link, node)][0]
        out = _run([*self.prefix(node), "cat", f"/sys/class/net/{dev}/statistics/rx_bytes",
                    f"/sys/class/net/{dev}/statistics/tx_bytes"]).stdout.split()  # fmt: skip
        return int(out[0]), int(out[1])

    # -- tear-down -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process started here and delete the namespaces (idempotent)."""
        for proc in self._procs:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # a delay line's stop signal
        for proc in self._procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(3)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()
        for name in reversed(list(self.namespaces.values())):
            pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:  # everything inside is ours: we made the namespace
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run(["ip", "netns", "del", name], check=False)
        self.namespaces.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _veth(ns: str, name: str, peer_ns: str, peer_name: str) -> None:
    peer = ("peer", "name", peer_name, "netns", peer_ns)
    _run(("ip", "-n", ns, "link", "add", name, "type", "veth", *peer))


def _tbf(ns: str, dev: str, spec: LinkSpec) -> None:
    if spec.rate_bps is None:
        return
    # Burst: 2 ms of link time, at least 64 KiB (a GSO frame must fit in one burst).
    burst = max(64 << 10, int(spec.rate_bps / 8 * 0.002))
    latency_ms = (spec.queue_limit_s() or 0.05) * 1000
    rate = f"{int(spec.rate_bps)}bit"
    tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", f"{latency_ms:.3f}ms"]
    _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf])
