"""Transport benchmark of ionn_net.aio against baselines measured in the same run.

Three parts, one invocation (``python bench/transport.py [--quick]``; one part with
``--only bulk|longfat|hol``, ``--bulk-only`` for the first, ``--reps N`` runs per case):

1. Bulk throughput over loopback: ionn_net (one stream, default and bulk-tuned Limits) versus
   a raw uvloop socket (Protocol + transport.write of 64 KiB chunks) moving the same bytes.
2. One stream over a long fat link (200 Mbit/s, 20 ms one-way): a fixed 1 MiB receive window
   against the auto-tuned default and a 4 MiB initial window, as a share of the link.
3. Head-of-line blocking: p50/p99 round trip of 16 KiB queries (16 KiB answers) while a large
   upload runs, over links shaped to 200 and 20 Mbit/s, without and with 20 ms one-way delay.
   Compared: ionn_net (scheduler + small buffers), ionn_net paced (rate given, and estimated),
   naive FIFO framing on one connection, the upload on a second TCP connection, and grpcio
   (aio) with a streaming upload RPC and a unary query RPC on one channel.

Servers and clients run as subprocesses (``bench/transport_peers.py``), so that the same
code runs on loopback, behind the userspace shaping proxy, or inside the network namespaces
of ``ionn_net.netem.NamespaceLink`` (tbf, when root). Every child has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

QUERY_BYTES = 16 * 1024
QUERY_SHARE = 0.04  # fraction of the link the queries of the HOL test use
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transport_peers.py")


# --------------------------------------------------------------------------- orchestration


@dataclass
class Link:
    """Where the processes run and how the client reaches the server."""

    name: str
    backend: str
    server_prefix: list[str]
    client_prefix: list[str]
    bind_host: str
    connect_host: str
    front: Callable[[int], AbstractContextManager[tuple[str, int]]] | None = None
    rate_bps: float | None = None
    delay_ms: float = 0.0

    def address(self, server_port: int) -> AbstractContextManager[tuple[str, int]]:
        if self.front is not None:
            return self.front(server_port)
        return contextlib.nullcontext((self.connect_host, server_port))


def _python(role: str, kind: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, PEERS, "--role", role, "--kind", kind, *extra]


def _read_port(proc: subprocess.Popen[str], marker: str, what: str) -> int:
    """Read stdout lines until one starts with ``marker``; its last word is the port."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(marker):
            return int(line.split()[-1])
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"{what} did not start (exit code {proc.poll()})")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def _server(link: Link, kind: str, profile: str) -> Iterator[int]:
    argv = link.server_prefix + _python(
        "server", kind, ["--host", link.bind_host, "--port", "0", "--profile", profile]
    )
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield _read_port(proc, "PORT ", f"{kind} server")
    finally:
        _stop(proc)


@contextlib.contextmanager
def _proxy_front(rate_bps: float, delay_ms: float, port: int) -> Iterator[tuple[str, int]]:
    """The userspace shaping proxy (ionn_net.netem.proxy) in its own process."""
    argv = [sys.executable, "-m", "ionn_net.netem.proxy", "--target", f"127.0.0.1:{port}"]
    for side in ("up", "down"):
        argv += [f"--{side}-rate-bps", str(rate_bps), f"--{side}-delay-ms", str(delay_ms)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield "127.0.0.1", _read_port(proc, "listening", "shaping proxy")
    finally:
        _stop(proc)


def run_pair(link: Link, kind: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Start a server of ``kind``, run one client against it, return the client's JSON."""
    profile = params.get("profile", "default")
    with (
        _server(link, kind, profile) as port,
        link.address(port) as (host, front_port),
    ):
        argv = link.client_prefix + _python(
            "client",
            kind,
            ["--host", host, "--port", str(front_port), "--params", json.dumps(params)],
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} client failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def loopback_link() -> Link:
    return Link("loopback", "loopback", [], [], "127.0.0.1", "127.0.0.1")


def bench_bulk(quick: bool, reps: int | None = None) -> None:
    """Best of several interleaved runs each (the machine is shared: noise only slows).

    Each run is a fresh server and client process moving one 256 MiB message. Besides the
    rate, the client's CPU per GiB (user + system) is shown: on a loaded machine it is a
    steadier measure of the sender's cost than the wall-clock rate.
    """
    link = loopback_link()
    total = 256 << 20  # one message; MAX_MESSAGE_SIZE is 256 MiB
    reps = reps or (3 if quick else 6)
    cases = (("raw", "default"), ("ionn", "default"), ("ionn", "frames64"), ("ionn", "paced"))
    print(f"== bulk throughput over loopback: {total >> 20} MiB per run, best of {reps}")
    best = dict.fromkeys(cases, 0.0)
    cpu = dict.fromkeys(cases, float("inf"))
    for _ in range(reps):
        for kind, profile in cases:
            params: dict[str, Any] = {"test": "bulk", "bytes": total, "profile": profile}
            if profile == "paced":  # the client's default: pacing at an estimated rate
                params.update(profile="default", pacing="auto")
            result = run_pair(link, kind, params, 120)
            best[kind, profile] = max(best[kind, profile], result["rate"])
            spent = (result["client_user_s"] + result["client_sys_s"]) / (total / 2**30)
            cpu[kind, profile] = min(cpu[kind, profile], spent)
    raw = best["raw", "default"]
    labels = {
        ("raw", "default"): "raw uvloop socket, 64 KiB writes",
        ("ionn", "default"): "ionn_net, default Limits (32 KiB frames)",
        ("ionn", "frames64"): "ionn_net, Limits(max_chunk=64 KiB)",
        ("ionn", "paced"): "ionn_net, pacing at an estimated rate",
    }
    print(f"  {'sender':42s} {'MB/s':>8s}       {'vs raw':>6s}   client CPU s/GiB")
    for case, rate in best.items():
        print(
            f"  {labels[case]:42s} {rate / 1e6:8.1f} MB/s  {rate / raw:6.1%} of raw"
            f"   {cpu[case]:.3f}"
        )


# --------------------------------------------------------------------------- shaped links

#: (--cases name, peer kind, label, pacing)
HOL_CASES: tuple[tuple[str, str, str, str | None], ...] = (
    ("ionn", "ionn", "ionn_net (priorities, small buffers)", None),
    ("given", "ionn", "ionn_net + pacing at given rate", "given"),
    ("auto", "ionn", "ionn_net + pacing, rate estimated", "auto"),
    ("fifo", "fifo", "naive FIFO framing, one connection", None),
    ("second", "second", "upload on a second TCP connection", None),
    ("grpc", "grpc", "gRPC aio, one channel", None),
)
HOL_CASE_NAMES = tuple(case[0] for case in HOL_CASES)


@contextlib.contextmanager
def shaped_link(rate_bps: float, delay_ms: float, backend: str) -> Iterator[tuple[Link, Any]]:
    """A link shaped both ways; yields it and a handle to probe it."""
    name = f"{rate_bps / 1e6:g} Mbit/s, {delay_ms:g} ms one-way"
    if backend == "userspace-proxy":
        link = Link(
            name,
            backend,
            [],
            [],
            "127.0.0.1",
            "127.0.0.1",
            front=lambda port: _proxy_front(rate_bps, delay_ms, port),
            rate_bps=rate_bps,
            delay_ms=delay_ms,
        )
        yield link, None
        return
    from ionn_net.netem.netns import NamespaceLink

    with NamespaceLink(rate_bps=rate_bps, delay_ms=delay_ms) as ns:
        prefix_a = ["ip", "netns", "exec", ns.namespaces["a"]]
        prefix_b = ["ip", "netns", "exec", ns.namespaces["b"]]
        host = ns.addresses["b"]
        link = Link(
            name,
            str(ns.backend),
            prefix_b,
            prefix_a,
            host,
            host,
            rate_bps=rate_bps,
            delay_ms=delay_ms,
        )
        yield link, ns


def probe(link: Link, ns: Any) -> tuple[float, float]:
    """Measured goodput (bit/s) and idle round trip (ms) of the upload direction."""
    if ns is not None:
        # Two probes, the faster kept: on a shared machine a probe can only read low.
        first = ns.probe(direction="up", duration_s=1.5, pings=10)
        second = ns.probe(direction="up", duration_s=1.5, pings=10)
        result = max(first, second, key=lambda r: float(r.measured_rate_bps or 0.0))
    else:
        from ionn_net.netem.probe import probe_link

        argv = [sys.executable, "-m", "ionn_net.netem.probe", "serve", "--host", "127.0.0.1"]
        server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            port = _read_port(server, "listening", "probe server")
            with link.address(port) as (host, front):
                result = asyncio.run(probe_link(host, front, duration_s=1.5, pings=10))
        finally:
            _stop(server)
    return float(result.measured_rate_bps), float(result.rtt_ms_p50)


def _hol_row(label: str, r: dict[str, Any], link_bps: float, grpc_p99: float | None) -> str:
    gain = f"{grpc_p99 / r['busy_p99']:6.1f}x" if grpc_p99 else "      -"
    return (
        f"  {label:38s} {r['idle_p50'] * 1e3:6.1f} {r['idle_p99'] * 1e3:6.1f} |"
        f" {r['busy_p50'] * 1e3:7.1f} {r['busy_p99'] * 1e3:7.1f} |"
        f" {(r['busy_p99'] - r['idle_p99']) * 1e3:+7.1f} | {_split(r)} | {gain} |"
        f" {r['upload_rate'] * 8 / 1e6:6.1f} {r['upload_rate'] * 8 / link_bps:6.1%} |"
        f" {r['busy_n']:4d}" + _discarded(r)
    )


def _split(r: dict[str, Any]) -> str:
    """p99 minus idle p99 of the queries issued in the upload's first second (count) and of
    the rest: the first ones meet whatever the upload's start left in the queues."""
    if "first_n" not in r:
        return f"{'-':>20s}"
    first = _minus_idle(r, "first_p99")
    return f"{first:>7s} ({r['first_n']:3d}) {_minus_idle(r, 'rest_p99'):>8s}"


def _minus_idle(r: dict[str, Any], key: str) -> str:
    value = r.get(key)
    if value is None or math.isnan(value):  # no query in that part
        return "-"
    return f"{(value - r['idle_p99']) * 1e3:+.1f}"


def _discarded(r: dict[str, Any]) -> str:
    """Diagnostics: packets the bottleneck dropped during the case (namespace links), segments
    the ionn_net client retransmitted while it probed, and for the paced cases the rate the
    pacer could not spend during the upload, as a share of the upload (stalls longer than
    its burst)."""
    out = "" if r.get("qdisc_drops") is None else f" | drops {r['qdisc_drops']}"
    if r.get("retrans_during_busy") is not None:
        out += f" | retrans {r['retrans_during_busy']} ({r['queries_with_retrans']} queries)"
    lost, forgiven = r.get("pacer_discarded"), r.get("pacer_forgiven")
    if forgiven is not None:
        out += f" | forgiven {forgiven / r['upload_bytes']:.1%}"
    return out + ("" if lost is None else f" | pacer lost {lost / r['upload_bytes']:.1%}")


def _drops(ns: Any) -> int | None:
    """Upload-direction drops of the bottleneck so far (None where they cannot be read)."""
    read = getattr(ns, "qdisc_drops", None)
    up = None if read is None else read().get("up")
    return None if up is None else int(up)


#: Kernel TCP events that cost a round trip or a timer: what a query tail may come from.
_TCP_EVENTS = (
    "RetransSegs",
    "TCPLossProbes",
    "TCPTimeouts",
    "TCPSpuriousRTOs",
    "DelayedACKs",
    "DelayedACKLost",
    "TCPFastRetrans",
    "TCPOFOQueue",
    "TCPRcvQDrop",
    "TCPBacklogDrop",
)


def _tcp_counters(ns: Any) -> dict[str, dict[str, int]] | None:
    read = getattr(ns, "tcp_counters", None)
    return None if read is None else {role: read(role) for role in ("a", "b")}


def _counter_deltas(
    before: dict[str, dict[str, int]] | None,
    after: dict[str, dict[str, int]] | None,
    every: bool = False,
) -> str:
    """Non-zero changes of :data:`_TCP_EVENTS` (``every``: of all counters), client
    namespace (a) and server (b)."""
    if before is None or after is None:
        return ""
    parts = []
    for role in ("a", "b"):
        names = sorted(after[role]) if every else _TCP_EVENTS
        moved = {name: after[role].get(name, 0) - before[role].get(name, 0) for name in names}
        shown = " ".join(f"{name}={n}" for name, n in moved.items() if n)
        parts.append(f"{'client' if role == 'a' else 'server'}: {shown or '-'}")
    return "; ".join(parts)


def _slowest(rows: list[dict[str, Any]]) -> str:
    """The slowest busy queries: when (s into the probing), round trip split at the moment
    the server had the whole query (and its head), retransmissions meanwhile, unsent bytes
    ahead of it in the socket, the worst event-loop lateness of client / server meanwhile
    (a process that did not run) and the smoothed RTT when it began."""
    return ", ".join(
        f"{q['rtt_ms']:.0f} ms @{q['t_s']:.1f}s (up {q['up_ms']:.0f} [head {q['head_ms']:.0f}]"
        f" down {q['down_ms']:.0f}) re={q['retrans']} unsent={q['notsent_before']}"
        f" lag {q['client_lag_ms']:.0f}/{q['server_lag_ms']:.0f}"
        f" srtt={q['srtt_before_ms']:.0f} opened {q.get('opened_ms', '?')} ms"
        f" writer {q.get('writer', {})}{_kernel_view(q)}"
        for q in rows[:5]
    )


def _cwnd_watch(r: dict[str, Any]) -> str:
    """Samples per tcpi_ca_state, the smallest congestion window seen and the moments the
    state changed or the window fell below ten segments (t, state, cwnd/ssthresh segments,
    in flight, unsent)."""
    names = {0: "open", 1: "disorder", 2: "cwr", 3: "recovery", 4: "loss"}
    states = " ".join(f"{names.get(int(k), k)}={n}" for k, n in sorted(r["ca_states"].items()))
    low = r.get("cwnd_min") or {}
    events = ", ".join(
        f"@{e['t_s']:.2f}s {names.get(e.get('ca_state'), '?')} cwnd={e.get('cwnd')}"
        f"/{e.get('ssthresh')} unacked={e.get('unacked')} unsent={e.get('notsent')}"
        for e in r.get("cwnd_events", [])[:12]
    )
    return (
        f"{states}; smallest cwnd {low.get('cwnd')} segs @{low.get('t_s')}s;"
        f" changes: {events or '-'}"
    )


def _pacer_trace(trace: list[list[Any]], link_bps: float) -> str:
    """The pacing rate and the bottleneck estimate as shares of the probed link, and the
    queueing delay the pacer saw, at a few moments of the upload (its start in detail),
    then the median pacing rate over the upload's second half."""
    link = link_bps / 8

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value / link:.3f}"

    marks = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
    shown, at = [], 0
    for t, pacing, estimate, queue, *_ in trace:
        if at < len(marks) and t >= marks[at]:
            shown.append(f"@{t:.2f}s {share(pacing)}/{share(estimate)} q={queue}")
            while at < len(marks) and t >= marks[at]:
                at += 1
    late = sorted(row[1] for row in trace[len(trace) // 2 :] if row[1] is not None)
    median = f"{late[len(late) // 2] / link:.3f}" if late else "-"
    return ", ".join(shown) + f"; median pacing rate over the second half {median}"


def _kernel_view(q: dict[str, Any]) -> str:
    """When the query's head reached the client's socket and what the socket held then
    (unsent bytes, segments in flight x MSS against the congestion window, the peer's
    window), and how long sending was held by the peer's window / the send buffer during
    the query (tcp_info chrono counters)."""
    if "written_ms" not in q:
        return ""
    w = q["at_write"]
    mss = w.get("mss", 0)
    text = (
        f" [written {q['written_ms']:.0f} ms: unsent={w.get('notsent')}"
        f" inflight={w.get('unacked', 0) * mss} cwnd={w.get('cwnd', 0) * mss}"
        f" wnd={w.get('snd_wnd', '?')} lost={w.get('lost')}"
        f" lastack={w.get('last_ack_recv_ms')}ms]"
    )
    held = [
        f"{label}={q['d_' + name] / 1e3:.0f}ms"
        for name, label in (("rwnd_limited_us", "rwnd"), ("sndbuf_limited_us", "sndbuf"))
        if q.get("d_" + name)
    ]
    return text + (" held " + " ".join(held) if held else "")


def bench_link(
    link: Link,
    ns: Any,
    quick: bool,
    gain: float | None = None,
    *,
    cases: Sequence[str] = HOL_CASE_NAMES,
    all_counters: bool = False,
    congestion: str | None = None,
) -> dict[str, dict[str, Any]]:
    measured, rtt_ms = probe(link, ns)
    # Slow links get longer runs so that enough queries are sampled.
    budget_s = (6.0 if quick else 15.0) * (2.0 if measured < 50e6 else 1.0)
    upload = min(256 << 20, int(measured / 8 * budget_s))
    expected_s = upload * 8 / measured
    # Queries are spaced to use about QUERY_SHARE of the link, leaving the rest to the upload.
    gap_s = max(0.005, QUERY_BYTES / (QUERY_SHARE * measured / 8))
    print(
        f"-- {link.name} [{link.backend}]: probed {measured / 1e6:.1f} Mbit/s goodput, idle RTT"
        f" {rtt_ms:.1f} ms; upload {upload / 2**20:.0f} MiB (~{expected_s:.0f} s); 16 KiB"
        f" queries (16 KiB answers) every {gap_s * 1e3:.0f} ms on average"
    )
    print(
        "  (ionn_net with Limits(initial_stream_credit=4 MiB, initial_connection_credit=32 MiB);"
        " the default 1 MiB stream credit caps one stream at ~1 MiB per round trip)"
    )
    print(
        f"  {'transport':38s} {'idle p50/p99 ms':>13s} | {'busy p50/p99 ms':>15s} | p99-idle |"
        f" {'1st s (n) / after':>20s} | p99 gain | {'upload Mbit/s':>13s} | n"
    )
    rows: dict[str, dict[str, Any]] = {}
    for name, kind, label, pacing in HOL_CASES:
        if name not in cases:
            continue
        params: dict[str, Any] = {
            "test": "hol",
            "idle_queries": 50 if quick else 150,
            "upload_bytes": upload,
            # Queries from the upload's first byte on: in IONN's use the first queries are
            # issued exactly when the upload begins.
            "warmup_s": 0.0,
            "gap_s": gap_s,
            "deadline_s": 3 * expected_s + 30,
        }
        if kind == "ionn":
            params["profile"] = "wide"
            if congestion is not None:
                params["transport"] = {"congestion": congestion}
        if pacing == "given":
            params["pacing"] = measured
        elif pacing == "auto":
            params["pacing"] = "auto"
        if pacing is not None and gain is not None:
            params["pacing_gain"] = gain
        drops_before, tcp_before = _drops(ns), _tcp_counters(ns)
        try:
            rows[label] = run_pair(link, kind, params, timeout=4 * expected_s + 90)
            rows[label]["tcp_counters"] = _counter_deltas(
                tcp_before, _tcp_counters(ns), every=all_counters
            )
            drops_after = _drops(ns)
            if drops_before is not None and drops_after is not None:
                rows[label]["qdisc_drops"] = drops_after - drops_before
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            lines = str(exc).splitlines() or [""]
            print(f"  {label:38s} FAILED: {lines[-1][:200]}")
            for line in lines:
                if line.startswith("upload past its deadline"):
                    print(f"    {line[:3000]}")
    grpc = rows.get(HOL_CASES[-1][2])
    for label, r in rows.items():
        gain_base = None if grpc is None or label.startswith("gRPC") else grpc["busy_p99"]
        print(_hol_row(label, r, measured, gain_base))
    for label, r in rows.items():
        if r.get("slowest"):
            print(f"  slowest queries of '{label}': {_slowest(r['slowest'])}")
        if r.get("ca_states"):
            print(f"  congestion states of '{label}' (2 ms samples): {_cwnd_watch(r)}")
        if r.get("tcp_counters"):
            print(f"  TCP counters during '{label}': {r['tcp_counters']}")
        if r.get("pacer_trace"):
            print(f"  pacer of '{label}' (x link): {_pacer_trace(r['pacer_trace'], measured)}")
        if r.get("pacer_events"):
            print(f"  pacer decisions of '{label}': {r['pacer_events']}")
    for r in rows.values():
        r["link_bps"] = measured
    return rows


def _save(path: str | None, link: str, rows: dict[str, dict[str, Any]]) -> None:
    """Append the link's raw results (every query, the pacer's trace) as one JSON line."""
    if path is not None:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"link": link, "rows": rows}) + "\n")


LONGFAT_CASES = (
    ("fixed", "ionn_net, 1 MiB stream window, no auto-tuning"),
    ("default", "ionn_net, default Limits (auto-tuned)"),
    ("wide", "ionn_net, initial 4 MiB stream window"),
)


def bench_longfat(quick: bool, backend: str | None, reps: int | None) -> None:
    """One stream over a long fat link: does the receive window keep the link full?

    200 Mbit/s with 20 ms one-way delay (tbf + delay line in network namespaces, as root;
    else the userspace proxy): the bandwidth-delay product is about 1 MB, so a fixed
    1 MiB window (CREDIT every half window) cannot fill the link, while auto-tuning grows
    it. Rates are goodput of one 256 MiB-bounded message against the probed link goodput.
    """
    from ionn_net.netem.select import choose_backend

    choice = choose_backend(None if backend is None else backend)
    kind = "userspace-proxy" if choice.kind == "userspace-proxy" else "netns"
    reps = reps or (1 if quick else 2)
    print(f"== one stream over a long fat link: {choice.message()}")
    with shaped_link(200e6, 20.0, kind) as (link, ns):
        measured, rtt_ms = probe(link, ns)
        total = min(256 << 20, int(measured / 8 * (4.0 if quick else 8.0)))
        expected_s = total * 8 / measured
        print(
            f"-- {link.name} [{link.backend}]: probed {measured / 1e6:.1f} Mbit/s goodput, "
            f"idle RTT {rtt_ms:.1f} ms; {total / 2**20:.0f} MiB per run, best of {reps}"
        )
        best = {profile: 0.0 for profile, _ in LONGFAT_CASES}
        for _ in range(reps):
            for profile, _ in LONGFAT_CASES:
                params = {"test": "bulk", "bytes": total, "profile": profile}
                result = run_pair(link, "ionn", params, 6 * expected_s + 60)
                best[profile] = max(best[profile], result["rate"])
    for profile, label in LONGFAT_CASES:
        rate = best[profile] * 8
        print(f"  {label:46s} {rate / 1e6:7.1f} Mbit/s  {rate / measured:6.1%} of the link")


def _verdicts(name: str, rows: dict[str, dict[str, Any]], slack_ms: float) -> list[str]:
    """The targets, for each ionn_net variant that ran: the p99 of every query, and apart
    the p99 of those issued in the upload's first second and of the rest."""
    grpc = rows.get(HOL_CASES[-1][2])
    lines = []
    for _, _, label, _ in HOL_CASES[:3]:
        r = rows.get(label)
        if r is None:
            lines.append(f"  {name} | {label}: not run or did not complete")
            continue
        extra = (r["busy_p99"] - r["idle_p99"]) * 1e3
        share = r["upload_rate"] * 8 / r["link_bps"]
        parts = [f"p99 {extra:+.1f} ms vs idle (<= +{slack_ms:g}: {_ok(extra <= slack_ms)})"]
        for key, what in (("first_p99", "first second"), ("rest_p99", "after it")):
            value = r.get(key)
            if value is not None and not math.isnan(value):  # some query ran then
                part = (value - r["idle_p99"]) * 1e3
                parts.append(f"{what} {part:+.1f} ms ({_ok(part <= slack_ms)})")
        if grpc is not None:
            ratio = grpc["busy_p99"] / r["busy_p99"]
            parts.append(f"{ratio:.1f}x below gRPC's p99 (>= 10x: {_ok(ratio >= 10)})")
        parts.append(f"upload {share:.1%} of link (>= 90%: {_ok(share >= 0.9)})")
        lines.append(f"  {name} | {label}: " + ", ".join(parts))
    return lines


def _ok(flag: bool) -> str:
    return "met" if flag else "MISSED"


#: The four links of the head-of-line test: (Mbit/s, one-way delay ms, allowed p99 slack ms).
HOL_LINKS = {
    "200/0": (200, 0, 5.0),
    "200/20": (200, 20, 5.0),
    "20/0": (20, 0, 10.0),
    "20/20": (20, 20, 10.0),
}


def bench_hol(
    quick: bool,
    backend: str | None,
    links: Sequence[str] = tuple(HOL_LINKS),
    gain: float | None = None,
    *,
    cases: Sequence[str] = HOL_CASE_NAMES,
    all_counters: bool = False,
    congestion: str | None = None,
    save: str | None = None,
) -> None:
    from ionn_net.netem.select import choose_backend

    choice = choose_backend(None if backend is None else backend)
    print(f"== head-of-line blocking: {choice.message()}")
    kind = "userspace-proxy" if choice.kind == "userspace-proxy" else "netns"
    verdicts = []
    if gain is not None:
        print(f"   (pacing gain {gain:g} instead of PacingConfig's default)")
    for key in links:
        mbit, delay_ms, slack_ms = HOL_LINKS[key]
        with shaped_link(mbit * 1e6, delay_ms, kind) as (link, ns):
            rows = bench_link(
                link, ns, quick, gain, cases=cases, all_counters=all_counters, congestion=congestion
            )
        for direction, stats in getattr(ns, "delay_line_stats", {}).items():
            print(  # the whole link's life, every case: did the emulator itself run late?
                f"  delay line {direction}: {stats.frames_out} frames, {stats.late_5ms} sent"
                f" > 5 ms after due, worst {stats.late_max_us / 1e3:.1f} ms late"
            )
        verdicts += _verdicts(link.name, rows, slack_ms)
        _save(save, key, rows)
    print("== targets (p99 of query RTT during the upload; link = probed goodput)")
    print("\n".join(verdicts))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (smaller uploads)")
    parser.add_argument("--only", choices=("bulk", "hol", "longfat"), default=None)
    parser.add_argument(
        "--bulk-only", action="store_true", help="only the loopback bulk part (= --only bulk)"
    )
    parser.add_argument("--reps", type=int, default=None, help="bulk runs per case (best of)")
    parser.add_argument(
        "--backend",
        choices=("netem", "tbf+pktdelay", "userspace-proxy"),
        default=None,
        help="link emulation (default: the best available)",
    )
    parser.add_argument(
        "--links",
        nargs="+",
        choices=tuple(HOL_LINKS),
        default=tuple(HOL_LINKS),
        help="head-of-line links, Mbit/s / one-way delay ms (default: all four)",
    )
    parser.add_argument(
        "--pacing-gain",
        type=float,
        default=None,
        help="pacing gain of the paced cases (default: PacingConfig's, 0.95)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=HOL_CASE_NAMES,
        default=HOL_CASE_NAMES,
        help="head-of-line cases to run (default: all; ratios need grpc)",
    )
    parser.add_argument(
        "--all-tcp-counters",
        action="store_true",
        help="print every kernel TCP counter that moved during a case, not only loss events",
    )
    parser.add_argument(
        "--congestion",
        default=None,
        help="TCP congestion control of the ionn_net cases (default: TransportOptions')",
    )
    parser.add_argument(
        "--save", default=None, help="append each link's raw results as a JSON line here"
    )
    args = parser.parse_args(argv)
    if args.bulk_only:
        args.only = "bulk"
    if args.only in (None, "bulk"):
        bench_bulk(args.quick, args.reps)
    if args.only in (None, "longfat"):
        bench_longfat(args.quick, args.backend, args.reps)
    if args.only in (None, "hol"):
        bench_hol(
            args.quick,
            args.backend,
            args.links,
            args.pacing_gain,
            cases=args.cases,
            all_counters=args.all_tcp_counters,
            congestion=args.congestion,
            save=args.save,
        )


if __name__ == "__main__":
    main()
