"""The end-to-end bench against the simulator: agreement tables of an ``ionn-bench`` output
directory, as BENCHMARKS.md quotes them.

Prints (markdown) one row per run: mean latency during the upload measured and as the
simulator replays it (the run's own measured inputs, ``prediction``; and with the server's
announced cost model and the probed link, ``prediction.announced``), the upload's end,
the client's planning time and the first upload byte's delay after the session was ready;
then per group the mean latency over the common window (all_at_once's upload time),
measured and simulated, with ``ours`` against ``ionn`` and ``efficiency``; then the checks
of the agreement criteria (simulator within 15%, ``ours`` no more than 3% behind, first
byte within 50 ms).

Usage: ``python bench/agreement.py DIR`` (after ``python bench/repredict.py DIR``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ionn_net.bench.cli import load_groups
from ionn_net.bench.report import common_window

TOLERANCE_PCT = 15.0
BEHIND_PCT = 3.0
AHEAD_PCT = 5.0
FIRST_BYTE_MS = 50.0


def _f(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mean(points: Sequence[tuple[float, float]], window: float | None) -> float | None:
    ms = [m for t, m in points if window is None or t < window]
    return sum(ms) / len(ms) if ms else None


def _measured(doc: Mapping[str, Any]) -> list[tuple[float, float]]:
    return [(float(q["t"]), float(q["ms"])) for q in doc["queries"]]


def _simulated(doc: Mapping[str, Any]) -> list[tuple[float, float]]:
    pred = doc.get("prediction") or {}
    return [(float(q[0]), float(q[1])) for q in pred.get("queries", [])]


def _rel(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a / b - 1) * 100


def run_rows(groups: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[list[str], list[str]]:
    """The per-run table and the criteria it fails (simulator error, first byte)."""
    out = [
        "| scenario / model | strategy | mean during upload: measured / simulated (ms) "
        "| error | error, announced costs | upload done (s) | planning (s) "
        "| first byte after ready (ms) | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fails: list[str] = []
    for docs in groups:
        for d in docs:
            where = f"{d['scenario']['name']} / {d['model']['name']}"
            if d["status"] != "ok":
                out.append(f"| {where} | {d['strategy']} | {d['status']} | | | | | | |")
                fails.append(f"{where} {d['strategy']}: run {d['status']}")
                continue
            m, t = d["metrics"], d["timing"]
            p = d.get("prediction") or {}
            err = (p.get("errors") or {}).get("mean_during_upload_pct")
            ann = ((p.get("announced") or {}).get("errors") or {}).get("mean_during_upload_pct")
            if err is not None and abs(err) > TOLERANCE_PCT:
                fails.append(f"{where} {d['strategy']}: simulator {err:+.1f}%")
            fb = t.get("first_byte_delay_ms")
            if fb is not None and fb > FIRST_BYTE_MS:
                fails.append(f"{where} {d['strategy']}: first byte {fb:.1f} ms")
            done = m.get("upload_done_s")
            if done is not None:
                done_t = _f(done, "{:.1f}")
            elif d["strategy"] == "local":
                done_t = "-"
            else:
                done_t = f"not in {_f(t.get('elapsed_s'))} s"
            sim = (p.get("metrics") or {}).get("mean_during_upload_ms")
            out.append(
                f"| {where} | {d['strategy']} | {_f(m.get('mean_during_upload_ms'))} / "
                f"{_f(sim)} | {_f(err, '{:+.0f}%')} | {_f(ann, '{:+.0f}%')} | {done_t} | "
                f"{_f(t.get('planned_s'), '{:.2f}')} | {_f(fb, '{:.1f}')} | "
                f"{d['machine']['loadavg'][0]:.1f} |"
            )
    return out, fails


def window_rows(groups: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[list[str], list[str]]:
    """The common-window table and the groups where ``ours`` misses the criterion."""
    names = ["local", "all_at_once", "neurosurgeon", "ionn", "efficiency", "ours"]
    out = [
        "| scenario / model | window (s) | "
        + " | ".join(names)
        + " | ours vs ionn: measured / simulated | ours vs efficiency: measured / simulated |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    fails: list[str] = []
    for docs in groups:
        w = common_window(docs)
        by = {d["strategy"]: d for d in docs if d["status"] == "ok"}
        meas = {s: _mean(_measured(d), w) for s, d in by.items()}
        sim = {s: _mean(_simulated(d), w) for s, d in by.items()}
        where = f"{docs[0]['scenario']['name']} / {docs[0]['model']['name']}"
        cells, versus = [], []
        for s in names:
            cells.append(f"{_f(meas.get(s))} / {_f(sim.get(s))}" if s in by else "-")
        for rival in ("ionn", "efficiency"):
            got = _rel(meas.get("ours"), meas.get(rival))
            want = _rel(sim.get("ours"), sim.get(rival))
            versus.append(f"{_f(got, '{:+.1f}%')} / {_f(want, '{:+.1f}%')}")
            if got is not None and got > BEHIND_PCT:
                fails.append(f"{where}: ours {got:+.1f}% against {rival}")
            elif got is not None and want is not None and want < -AHEAD_PCT and got >= 0:
                fails.append(f"{where}: ours not ahead of {rival} (simulated {want:+.1f}%)")
        span = _f(w, "{:.1f}") if w is not None else "whole run (no upload done)"
        out.append(f"| {where} | {span} | " + " | ".join(cells + versus) + " |")
    return out, fails


def main(out_dir: Path) -> int:
    groups = load_groups(out_dir)
    rows, run_fails = run_rows(groups)
    print("\n".join(rows))
    print()
    print("Mean latency over each group's common window, measured / simulated (ms):")
    print()
    rows, window_fails = window_rows(groups)
    print("\n".join(rows))
    print()
    for title, fails in (("runs", run_fails), ("common window", window_fails)):
        print(f"criteria not met ({title}): {len(fails)}")
        for line in fails:
            print(f"- {line}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
