"""Choice of the link-emulation backend, with the reason for it.

Owns :func:`choose_backend`. Preference order, most faithful first:

1. ``netem`` — kernel qdisc doing rate, delay, jitter and loss on a veth pair
   between namespaces (root, iproute2, a kernel with ``sch_netem``);
2. ``tbf+pktdelay`` — kernel ``tbf`` for the rate, a userspace packet delay line
   for delay and loss; TCP stays the kernel's end to end (root, iproute2, ``tbf``,
   packet sockets);
3. ``userspace-proxy`` — :class:`~ionn_net.netem.proxy.ShapingProxy` on loopback
   (no root; terminates TCP, so losses are modelled as stalls).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Literal

from ionn_net.errors import ConfigError
from ionn_net.netem.base import BackendUnavailableError
from ionn_net.netem.netns import environment_problem, netem_available

__all__ = ["BACKENDS", "BackendChoice", "backend_problems", "choose_backend"]

BackendKind = Literal["netem", "tbf+pktdelay", "userspace-proxy"]
BACKENDS: tuple[BackendKind, ...] = ("netem", "tbf+pktdelay", "userspace-proxy")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The backend that will run, why, and why each better one will not."""

    kind: BackendKind
    reason: str
    rejected: tuple[tuple[str, str], ...]

    def message(self) -> str:
        """One line: what runs and why the others do not."""
        parts = [f"link emulation: using {self.kind} ({self.reason})"]
        parts += [f"not {kind}: {why}" for kind, why in self.rejected]
        return "; ".join(parts)


def _packet_socket_problem() -> str | None:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    except (OSError, AttributeError) as exc:
        return f"packet sockets unavailable ({exc})"
    sock.close()
    return None


def backend_problems() -> dict[BackendKind, str | None]:
    """For each backend, why it cannot run here (None: it can)."""
    ns_problem = environment_problem()
    netem: str | None = ns_problem
    if netem is None and not netem_available():
        netem = "this kernel has no netem qdisc ('tc qdisc add ... netem' failed)"
    tbf = ns_problem if ns_problem is not None else _packet_socket_problem()
    return {"netem": netem, "tbf+pktdelay": tbf, "userspace-proxy": None}


def choose_backend(prefer: str | None = None, *, strict: bool = False) -> BackendChoice:
    """The best backend that runs here, or ``prefer`` when it runs.

    When ``prefer`` cannot run, the next one in the order is chosen and the
    message says so; with ``strict=True`` :class:`BackendUnavailableError` is raised.
    """
    if prefer is not None and prefer not in BACKENDS:
        raise ConfigError(f"prefer: expected one of {BACKENDS} or None, got {prefer!r}")
    problems = backend_problems()
    order = list(BACKENDS)
    if prefer is not None:
        if problems[prefer] is not None and strict:
            raise BackendUnavailableError(f"backend {prefer} unavailable: {problems[prefer]}")
        order.remove(prefer)
        order.insert(0, prefer)
    rejected: list[tuple[str, str]] = []
    for kind in order:
        problem = problems[kind]
        if problem is None:
            if kind == prefer:
                reason = "preferred"
            elif prefer is not None:
                reason = f"preferred {prefer} cannot run, next best"
            else:
                reason = "best available"
            choice = BackendChoice(kind, reason, tuple(rejected))
            _log.info(choice.message())
            return choice
        rejected.append((kind, problem))
    raise BackendUnavailableError("no link-emulation backend available")  # unreachable: proxy
