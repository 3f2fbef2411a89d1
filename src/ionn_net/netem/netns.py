"""Emulated links between Linux network namespaces (root only).

Owns :class:`NamespaceLink`: two namespaces, ``a`` (client side) and ``b``
(server side), addressed 10.200.0.1 and 10.200.0.2 (a /30 that exists only inside
them, never routed anywhere), joined so that ``a -> b`` is the ``up`` direction.

Backends, the best available first (see also :mod:`ionn_net.netem.select`):

* ``netem`` — a veth pair with a ``netem`` qdisc (rate, delay, jitter, loss) on
  each end. Used only when the kernel has netem: detected once by adding one in a
  throwaway namespace.
* ``tbf+pktdelay`` — ``a`` and ``b`` each reach a middle namespace ``m`` by veth;
  ``tbf`` on the ``a``/``b`` ends limits the rate (the kernel's own bottleneck,
  pushing back on TCP through its queue), and two
  :mod:`ionn_net.netem.pktdelay` processes in ``m`` carry frames across, holding
  each for the delay and dropping the lost ones. TCP stays the kernel's end to end.

GSO is off on the endpoint veths (``gso_max_segs 1``): packets are wire-sized, so
a queue drop or an emulated loss is one packet, as on a real link.
* ``tbf`` — a veth pair with ``tbf`` only, when no delay, jitter or loss is asked.

Everything created is removed on exit, also when the body raises, on Ctrl-C and
on SIGTERM (turned into ``SystemExit`` while a link is open in the main thread);
links still open at interpreter exit are closed by ``atexit``. Namespace names are
``ionn-<pid>-<n>-<role>``, so :func:`cleanup_stale` can remove what a killed
process left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import itertools
import json
import logging
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import IO, Literal

from ionn_net.errors import ConfigError
from ionn_net.netem.base import BackendUnavailableError, NetemError, is_root, which
from ionn_net.netem.pktdelay import DelayLineStats
from ionn_net.netem.probe import ProbeResult
from ionn_net.netem.proxy import LinkSpec

__all__ = [
    "ADDRESSES",
    "NamespaceLink",
    "cleanup_stale",
    "environment_problem",
    "list_namespaces",
    "netem_available",
    "receive_in_order",
]

logger = logging.getLogger("ionn_net.netem")

PREFIX = "ionn-"
ADDRESSES = {"a": "10.200.0.1", "b": "10.200.0.2"}
_CMD_TIMEOUT_S = 20.0
_counter = itertools.count()
_cache: dict[str, bool | str | None] = {}
_open_links: set[NamespaceLink] = set()
_lock = threading.Lock()

Backend = Literal["netem", "tbf+pktdelay", "tbf"]


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetemError(f"{' '.join(argv)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise NetemError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _try_qdiscs(name: str) -> None:
    """Record whether netem and tbf can be added, in the throwaway namespace ``name``."""
    lo = ("tc", "-n", name, "qdisc", "replace", "dev", "lo", "root")
    netem = _run((*lo, "netem", "delay", "1ms"), check=False)
    _cache["netem"] = netem.returncode == 0
    tbf = _run((*lo, "tbf", "rate", "10mbit", "burst", "32kb", "latency", "50ms"), check=False)
    _cache["tbf"] = tbf.returncode == 0


def environment_problem() -> str | None:
    """Why namespace links cannot run here, or None when they can (cached)."""
    if "problem" not in _cache:
        problem: str | None = None
        if not is_root():
            problem = "network namespaces need root (euid 0)"
        elif which("ip") is None:
            problem = "the 'ip' command (iproute2) is not installed"
        elif which("tc") is None:
            problem = "the 'tc' command (iproute2) is not installed"
        else:
            name = f"{PREFIX}{os.getpid()}-probe{next(_counter)}"
            try:
                _run(("ip", "netns", "add", name))
            except NetemError as exc:
                problem = f"cannot create a network namespace: {exc}"
            else:
                try:
                    _try_qdiscs(name)
                finally:
                    _run(("ip", "netns", "del", name), check=False)
                if not _cache["tbf"]:
                    problem = "the kernel has no 'tbf' qdisc"
        _cache["problem"] = problem
    value = _cache["problem"]
    return value if isinstance(value, str) else None


def netem_available() -> bool:
    """True when the kernel accepts a ``netem`` qdisc (tried once in a throwaway namespace)."""
    return environment_problem() is None and _cache.get("netem") is True


def list_namespaces() -> list[str]:
    """Names of the network namespaces that exist now."""
    if which("ip") is None:
        return []
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(name: str) -> None:
    """Kill what runs inside (all of it ours: we created the namespace), then delete it."""
    pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run(["ip", "netns", "del", name], check=False)


def cleanup_stale() -> list[str]:
    """Delete ``ionn-<pid>-...`` namespaces whose creating process is gone; returns them."""
    removed = []
    for name in list_namespaces():
        parts = name[len(PREFIX) :].split("-") if name.startswith(PREFIX) else []
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            _delete_namespace(name)
            removed.append(name)
    return removed


@atexit.register
def _close_open_links() -> None:
    for link in list(_open_links):
        link.close()


@dataclass(frozen=True, slots=True)
class _Plan:
    backend: Backend
    up: LinkSpec
    down: LinkSpec


class NamespaceLink:
    """Context manager: two namespaces joined by an emulated link.

    Either ``rate_bps`` / ``delay_ms`` / ``jitter_ms`` / ``loss`` (the same each way;
    ``delay_ms`` is one-way) or explicit ``up`` / ``down`` :class:`LinkSpec`.
    ``backend="auto"`` picks netem when the kernel has it, else tbf (+ pktdelay).
    """

    def __init__(
        self,
        rate_bps: float | None = None,
        delay_ms: float = 0.0,
        loss: float = 0.0,
        jitter_ms: float = 0.0,
        *,
        up: LinkSpec | None = None,
        down: LinkSpec | None = None,
        backend: Literal["auto", "netem", "tbf"] = "auto",
        seed: int | None = None,
    ) -> None:
        if (up is None) != (down is None):
            raise ConfigError("NamespaceLink: expected both up and down LinkSpecs or neither")
        if up is None or down is None:
            up = down = LinkSpec(
                rate_bps=rate_bps, delay_ms=delay_ms, jitter_ms=jitter_ms, loss=loss
            )
        if backend not in ("auto", "netem", "tbf"):
            raise ConfigError(f"backend: expected 'auto', 'netem' or 'tbf', got {backend!r}")
        self.up, self.down = up, down
        self._wanted = backend
        self._seed = seed
        self._base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.namespaces: dict[str, str] = {}
        self.addresses = dict(ADDRESSES)
        self.backend: Backend | None = None
        self._procs: list[subprocess.Popen[str]] = []
        self._delay_lines: list[tuple[str, subprocess.Popen[str]]] = []
        #: Final counters of the packet delay lines ("up", "down"), set by close().
        self.delay_line_stats: dict[str, DelayLineStats] = {}
        self._old_sigterm: object = None

    # -- set-up -----------------------------------------------------------------------
    def _plan(self) -> _Plan:
        problem = environment_problem()
        if problem is not None:
            raise BackendUnavailableError(f"NamespaceLink: {problem}")
        shaped = any(s.delay_ms or s.jitter_ms or s.loss for s in (self.up, self.down))
        if self._wanted == "netem" or (self._wanted == "auto" and netem_available()):
            if not netem_available():
                raise BackendUnavailableError(
                    "NamespaceLink: backend 'netem' asked, but this kernel has no netem qdisc "
                    "(tc qdisc add ... netem failed in a throwaway namespace)"
                )
            return _Plan("netem", self.up, self.down)
        return _Plan("tbf+pktdelay" if shaped else "tbf", self.up, self.down)

    def __enter__(self) -> NamespaceLink:
        plan = self._plan()
        with _lock:
            _open_links.add(self)
        self._trap_sigterm()
        try:
            self._build(plan)
        except BaseException:
            self.close()
            raise
        self.backend = plan.backend
        return self

    def _build(self, plan: _Plan) -> None:
        roles = ("a", "b", "m") if plan.backend == "tbf+pktdelay" else ("a", "b")
        for role in roles:
            name = f"{self._base}-{role}"
            _run(["ip", "netns", "add", name])
            self.namespaces[role] = name
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        a, b = self.namespaces["a"], self.namespaces["b"]
        if plan.backend == "tbf+pktdelay":
            m = self.namespaces["m"]
            _veth(a, "va", m, "ma")
            _veth(b, "vb", m, "mb")
            for dev in ("ma", "mb"):
                # Frames for a's and b's MAC addresses must reach the packet sockets.
                _run(["ip", "-n", m, "link", "set", "dev", dev, "promisc", "on"])
                _run(["ip", "-n", m, "link", "set", "dev", dev, "up"])
        else:
            _veth(a, "va", b, "vb")
        for role, dev in (("a", "va"), ("b", "vb")):
            ns = self.namespaces[role]
            _run(["ip", "-n", ns, "addr", "add", f"{self.addresses[role]}/30", "dev", dev])
            # Wire-sized packets. With GSO, tbf segments a 64 KiB burst and may drop part
            # of it after telling TCP it was queued: measured rates then fell to 65-85%
            # with long stalls. And a lost frame in the delay line must be one packet.
            gso = ("gso_max_size", "1500", "gso_max_segs", "1")
            _run(["ip", "-n", ns, "link", "set", "dev", dev, *gso])
            _run(["ip", "-n", ns, "link", "set", "dev", dev, "up"])
            receive_in_order(ns, dev)
        self._add_qdisc(a, "va", plan.up, plan.backend)
        self._add_qdisc(b, "vb", plan.down, plan.backend)
        if plan.backend == "tbf+pktdelay":
            self._start_delay_line("ma", "mb", plan.up, "up")
            self._start_delay_line("mb", "ma", plan.down, "down")

    @staticmethod
    def _add_qdisc(ns: str, dev: str, spec: LinkSpec, backend: Backend) -> None:
        base = ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root"]
        queue_s = spec.queue_limit_s() or 0.05
        if backend == "netem":
            args = ["netem", "delay", f"{spec.delay_ms}ms"]
            if spec.jitter_ms:
                args += [f"{spec.jitter_ms}ms"]
            if spec.loss:
                args += ["loss", f"{spec.loss * 100}%"]
            if spec.rate_bps is not None:
                args += ["rate", f"{int(spec.rate_bps)}bit"]
            _run(base + args)
        elif spec.rate_bps is not None:
            # Burst: 2 ms of link time, at least 16 KiB, so a timer tick never starves it.
            burst = max(16 << 10, int(spec.rate_bps / 8 * 0.002))
            tbf = ("tbf", "rate", f"{int(spec.rate_bps)}bit", "burst", str(burst))
            _run((*base, *tbf, "latency", f"{queue_s * 1000:.3f}ms"))

    def _start_delay_line(self, src: str, dst: str, spec: LinkSpec, label: str) -> None:
        seed = None if self._seed is None else self._seed * 7 + len(label)
        argv = [sys.executable, "-m", "ionn_net.netem.pktdelay", "--src", src, "--dst", dst]
        argv += ["--delay-ms", str(spec.delay_ms), "--jitter-ms", str(spec.jitter_ms)]
        argv += ["--loss", str(spec.loss)] + ([] if seed is None else ["--seed", str(seed)])
        proc = self.popen_in("m", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._delay_lines.append((label, proc))
        line = _readline(proc.stdout, 10.0)
        if line.strip() != "ready":
            raise NetemError(f"pktdelay {src}->{dst} did not start: {line!r}")

    # -- running things inside ----------------------------------------------------------
    def _ns(self, role: str) -> str:
        if role not in self.namespaces:
            raise ConfigError(f"namespace: expected one of {sorted(self.namespaces)}, got {role!r}")
        return self.namespaces[role]

    def run_in(
        self, role: str, argv: Sequence[str], *, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``role`` ("a" or "b") and wait for it."""
        return subprocess.run(
            ["ip", "netns", "exec", self._ns(role), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )

    def popen_in(self, role: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start ``argv`` inside namespace ``role``; it is killed when the link closes."""
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self._ns(role), *argv], text=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def call_in(
        self, role: str, fn: Callable[..., object], *args: object, timeout: float = 60.0
    ) -> object:
        """Call module-level ``fn(*args)`` in a fresh Python inside ``role``; returns its result.

        Arguments and result travel pickled between this process and its own child.
        """
        module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
        if module is None or "<" in name:
            raise ConfigError(f"call_in: expected a module-level function, got {fn!r}")
        # The child gets this process's sys.path, so what imports here imports there.
        payload = pickle.dumps((module, name, args, sys.path)).hex()
        proc = self.run_in(
            role,
            [sys.executable, "-m", "ionn_net.netem.netns", "call"],
            timeout=timeout,
            input=payload,
        )
        if proc.returncode != 0:
            raise NetemError(f"call_in {role}: {name} failed: {proc.stderr.strip()[-2000:]}")
        return pickle.loads(bytes.fromhex(proc.stdout.strip().splitlines()[-1]))

    def probe(
        self, *, direction: Literal["up", "down"] = "up", duration_s: float = 1.0, pings: int = 20
    ) -> ProbeResult:
        """Probe server in ``b``, client in ``a``: configured and measured rate and RTT."""
        server = self.popen_in(
            "b",
            [
                sys.executable,
                "-m",
                "ionn_net.netem.probe",
                "serve",
                "--host",
                self.addresses["b"],
                "--duration-s",
                "120",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            port = _readline(server.stdout, 10.0).split()[2]
            spec = self.up if direction == "up" else self.down
            argv = [
                sys.executable,
                "-m",
                "ionn_net.netem.probe",
                "client",
                "--host",
                self.addresses["b"],
            ]
            argv += ["--port", port, "--duration-s", str(duration_s), "--pings", str(pings)]
            argv += ["--direction", direction, "--backend", str(self.backend)]
            argv += ["--configured-rtt-ms", str(self.up.delay_ms + self.down.delay_ms)]
            if spec.rate_bps is not None:
                argv += ["--configured-rate-bps", str(spec.rate_bps)]
            out = self.run_in("a", argv, timeout=duration_s + 30)
            if out.returncode != 0:
                raise NetemError(f"probe client failed: {out.stderr.strip()}")
            return ProbeResult(**json.loads(out.stdout))
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)

    def qdisc_drops(self) -> dict[str, int]:
        """Packets the rate-limiting qdisc of each direction has dropped so far ("up", "down").

        A full bottleneck queue drops; loss then costs TCP a retransmission (a round trip or
        more). Read from ``tc -s qdisc``; a direction whose counter cannot be read is absent.
        """
        drops: dict[str, int] = {}
        for direction, role, dev in (("up", "a", "va"), ("down", "b", "vb")):
            out = _run(["tc", "-s", "-n", self._ns(role), "qdisc", "show", "dev", dev], check=False)
            found = re.search(r"dropped (\d+)", out.stdout)
            if out.returncode == 0 and found is not None:
                drops[direction] = int(found.group(1))
        return drops

    def tcp_counters(self, role: str) -> dict[str, int]:
        """The TCP counters of namespace ``role`` (``/proc/net/snmp`` "Tcp" and
        ``/proc/net/netstat`` "TcpExt", e.g. ``RetransSegs``, ``TCPLossProbes``,
        ``DelayedACKs``), each namespace counting only its own sockets."""
        out = self.run_in(role, ["cat", "/proc/net/snmp", "/proc/net/netstat"], timeout=10.0)
        counters: dict[str, int] = {}
        lines = [line.split() for line in out.stdout.splitlines()]
        for names, values in itertools.pairwise(lines):
            # A header line, then its values (same prefix, numbers instead of names).
            same_table = names and values and names[0] == values[0] in ("Tcp:", "TcpExt:")
            if same_table and names[1:2] != values[1:2]:
                counters.update(zip(names[1:], map(int, values[1:]), strict=False))
        return counters

    # -- tear-down ----------------------------------------------------------------------
    def _stop_delay_lines(self) -> None:
        """Close each delay line's stdin (its stop signal) and keep its final counters."""
        for label, proc in self._delay_lines:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                continue  # close() kills it
            tail = proc.stdout.read() if proc.stdout is not None else ""
            with contextlib.suppress(ValueError, TypeError, IndexError):
                self.delay_line_stats[label] = DelayLineStats(**json.loads(tail.splitlines()[-1]))
        self._delay_lines.clear()

    def close(self) -> None:
        """Stop every process started here and delete the namespaces (idempotent)."""
        self._stop_delay_lines()
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()
        for name in self.namespaces.values():
            _delete_namespace(name)
        self.namespaces.clear()
        self._restore_sigterm()
        with _lock:
            _open_links.discard(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _trap_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._old_sigterm = None


def receive_in_order(ns: str, dev: str) -> None:
    """Process every frame ``dev`` receives on one CPU, in the order it was sent.

    A veth hands a frame to the backlog of the CPU that transmitted it, and a ``tbf``
    dequeues either in the sender's context or in its watchdog's, on whichever CPU the
    timer fired: two backlogs drained in their own order reorder the flow. At 200 Mbit/s
    that made every fast retransmission in the benchmarks spurious (the receiver's
    DelayedACKLost equal to the sender's RetransSegs) and collapsed the congestion
    window to a segment or two, which no real link of this rate does. Receive packet
    steering to one CPU queues every frame in one backlog, in transmit order. A kernel
    without it (no ``rps_cpus``) still gets a working link, reordered, and a warning."""
    path = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
    done = _run(["ip", "netns", "exec", ns, "sh", "-c", f"echo 1 > {path}"], check=False)
    if done.returncode != 0:
        logger.warning("%s in %s may reorder frames: %s", dev, ns, done.stderr.strip())


def _veth(ns: str, name: str, peer_ns: str, peer_name: str) -> None:
    """A veth pair with one end ``name`` in ``ns`` and the other ``peer_name`` in ``peer_ns``."""
    peer = ("peer", "name", peer_name, "netns", peer_ns)
    _run(("ip", "-n", ns, "link", "add", name, "type", "veth", *peer))


def _sigterm_to_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _readline(stream: IO[str] | None, timeout: float) -> str:
    if stream is None:
        raise NetemError("child process has no stdout pipe")
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise NetemError(f"child process printed nothing within {timeout} s")
    return stream.readline()


def _call_main() -> int:
    module, name, args, path = pickle.loads(bytes.fromhex(sys.stdin.read().strip()))
    sys.path[:] = path
    target: object = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"call_in: {module}.{name} is not callable")
    print(pickle.dumps(target(*args)).hex(), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["call"]:
        sys.exit(_call_main())
    print("usage: python -m ionn_net.netem.netns call  (pickled call on stdin)", file=sys.stderr)
    sys.exit(2)
