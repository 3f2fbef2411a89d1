"""Metrics, the summary line, plots and the markdown table of the handoff benchmark.

Owns :func:`handoff_metrics` (from one run's events: when the client moved, the first
offloaded answer after the move, the mean latency after the move, the bytes exchanged with the
new server, lost and wrong answers, and the same before the move for pre-migration's cost),
:func:`summary_line` (the one line per strategy ``ionn-bench handoff`` prints),
:func:`plot_handoff` (latency against time since the move, one line per strategy, the move
marked) and :func:`handoff_markdown`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["handoff_markdown", "handoff_metrics", "plot_handoff", "summary_line"]

_COLORS = {"ionn": "#ff7f0e", "reupload": "#9467bd", "ours": "#d62728",
           "ours-premigrate": "#2ca02c"}  # fmt: skip


def handoff_metrics(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What one run measured (times in seconds since the move unless named otherwise)."""
    qs = doc["queries"]
    move = doc.get("move_t")
    after_s = float(doc["after_s"])
    answered = [q for q in qs if "lost" not in q]
    out: dict[str, Any] = {
        "move_t": move,
        "lost": sum(1 for q in qs if "lost" in q),
        "wrong": sum(1 for q in answered if not q["ok"]),
        "queries": len(qs),
    }
    if move is None:
        return out
    before = [q for q in answered if q["t"] < move]
    after = [q for q in answered if move <= q["t"] < move + after_s]
    first = next((q for q in after if q["offloaded"]), None)
    out.update(
        first_offload_after_move_s=None if first is None else round(first["end"] - move, 3),
        mean_after_move_ms=round(statistics.fmean(q["ms"] for q in after), 1) if after else None,
        mean_before_move_ms=round(statistics.fmean(q["ms"] for q in before), 1) if before else None,
        queries_after=len(after),
        wireless_mb_after_move=round(float(doc.get("wire_after", 0)) / 1e6, 2),
        fallbacks_after=sum(1 for q in after if q["fallback"]),
    )
    return out


def summary_line(doc: Mapping[str, Any]) -> str:
    """``handoff <strategy>: first offload after move <s> s, mean after move <ms> ms, ...``."""
    m = doc["metrics"]
    first = m.get("first_offload_after_move_s")
    first_text = f"{first:.2f}" if first is not None else f">{float(doc['after_s']):.0f}"
    mean = m.get("mean_after_move_ms")
    return (
        f"handoff {doc['strategy']}: first offload after move {first_text} s, "
        f"mean after move {mean if mean is not None else '-'} ms, "
        f"wireless MB after move {m.get('wireless_mb_after_move', '-')}, "
        f"lost {m['lost']}, wrong {m['wrong']}"
    )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_handoff(docs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Latency vs time since the move, every strategy of one scenario x model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for d in docs:
        move = d.get("move_t")
        qs = [q for q in d["queries"] if "lost" not in q]
        if move is None or not qs:
            continue
        color = _COLORS.get(d["strategy"])
        ax.plot([q["t"] - move for q in qs], [q["ms"] for q in qs], marker=".", markersize=3,
                linewidth=1.1, color=color, label=d["strategy"])  # fmt: skip
        first = d["metrics"].get("first_offload_after_move_s")
        if first is not None:  # the first answer the new server helped with
            ax.plot([first], [min(q["ms"] for q in qs) * 0.8], marker="^", color=color,
                    markersize=8, clip_on=False)  # fmt: skip
    ax.axvline(0.0, color="black", linewidth=1.5, linestyle="--", label="move")
    ax.set_yscale("log")
    ax.set_xlabel("time since the move to the second server (s)")
    ax.set_ylabel("query latency (ms, log scale); ^ = first offloaded answer after the move")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    d0 = docs[0]
    ax.set_title(f"handoff {d0['scenario']} / {d0['model']}: {d0['net']['describe']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def handoff_markdown(
    groups: Sequence[Sequence[Mapping[str, Any]]], header: Mapping[str, Any]
) -> str:
    """The summary: command, machine, networks, then one table row per run."""
    lines = [
        "# ionn-bench handoff",
        "",
        f"Command: `{header['command']}`",
        "",
        f"Machine: {header['machine']}",
        "",
        "| scenario / model | strategy | first offload after move (s) | vs ionn | mean after "
        "move (ms) | wireless MB after move | lost | wrong | mean before move (ms) | move at (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for docs in groups:
        base = next((d for d in docs if d["strategy"] == "ionn"), None)
        base_first = None if base is None else base["metrics"].get("first_offload_after_move_s")
        for d in docs:
            m = d["metrics"]
            first = m.get("first_offload_after_move_s")
            ratio = None if first is None or not base_first else round(first / base_first, 3)
            lines.append(
                f"| {d['scenario']} / {d['model']} | {d['strategy']} | {_cell(first)} | "
                f"{_cell(ratio)} | {_cell(m.get('mean_after_move_ms'))} | "
                f"{_cell(m.get('wireless_mb_after_move'))} | {m['lost']} | {m['wrong']} | "
                f"{_cell(m.get('mean_before_move_ms'))} | {_cell(m.get('move_t'), '{:.2f}')} |"
            )
    lines += ["", "Networks:", ""]
    seen = set()
    for docs in groups:
        net = docs[0]["net"]
        if net["describe"] not in seen:
            seen.add(net["describe"])
            lines.append(f"- {docs[0]['scenario']}: {net['describe']}; probed {net['probes']}")
    return "\n".join(lines) + "\n"
