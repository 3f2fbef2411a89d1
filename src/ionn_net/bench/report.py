"""Plots and the markdown summary of a benchmark invocation.

Owns :func:`plot_group` (query latency against time since connect, one line per
strategy, upload progress on a second axis), :func:`plot_prediction` (measured and
predicted latency per strategy, with the prediction error) and :func:`summary_markdown`
(machine, command, link and device, then per scenario x model the table of mean
latency during upload, time to first offloaded query, time to complete N queries,
upload completion, and the simulator's error; the mean latency in the lossless window W
measured and simulated; and, when the precision-first strategies ran, their gain over
``ionn`` in W across the groups, measured and simulated: :func:`precision_lines`).
Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "common_window",
    "plot_group",
    "plot_prediction",
    "precision_lines",
    "summary_markdown",
]

_COLORS = {
    "local": "#7f7f7f",
    "all_at_once": "#1f77b4",
    "neurosurgeon": "#9467bd",
    "ionn": "#ff7f0e",
    "efficiency": "#2ca02c",
    "ours": "#d62728",
    "ours-16": "#e377c2",
    "ours-8": "#8c564b",
}
#: The precision-first strategies and the exact one they are compared with.
_PRECISION_FIRST = ("ours-16", "ours-8")
_BASELINE = "ionn"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(docs: Sequence[Mapping[str, Any]]) -> str:
    d = docs[0]
    link = d["link"]
    up = (link.get("measured", {}).get("up") or {}).get("measured_rate_bps")
    rate = f"{up / 1e6:.1f} Mbit/s measured" if up else ""
    dev = d["device"]
    factor = float(dev["effective_factor"])
    return (
        f"{d['scenario']['name']} / {d['model']['name']}: {link['backend']} "
        f"({d['scenario']['link_text']}; {rate}); device {dev['kind']} x{factor:.1f}"
    )


def plot_group(docs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Latency vs time since connect for every strategy of one scenario x model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    ax2 = ax.twinx()
    for d in docs:
        qs = d["queries"]
        if not qs:
            continue
        color = _COLORS.get(d["strategy"])
        ax.plot(
            [q["t"] for q in qs],
            [q["ms"] for q in qs],
            marker=".",
            markersize=3,
            linewidth=1.2,
            color=color,
            label=d["strategy"],
        )
        approx = [q for q in qs if not q.get("exact", True)]
        if approx:  # ran on base-stage weights (precision-first): hollow circles
            ax.plot(
                [q["t"] for q in approx],
                [q["ms"] for q in approx],
                linestyle="none",
                marker="o",
                markersize=5,
                markerfacecolor="none",
                color=color,
                label=f"{d['strategy']}: on base-stage weights",
            )
        prog = [p for p in d["progress"] if p["total"] > 0]
        if prog and d["strategy"] != "local":
            ts = [0.0] + [p["t"] for p in prog]
            fr = [0.0] + [100.0 * p["sent"] / p["total"] for p in prog]
            ax2.step(ts, fr, where="post", linestyle="--", linewidth=1.0, color=color, alpha=0.6)
        done = d["metrics"].get("upload_done_s")
        if done is not None and d["strategy"] != "local":
            # the moment every planned layer was loaded and usable on the server
            ax2.plot([done], [102], marker="v", color=color, markersize=7, clip_on=False)
    ax.set_yscale("log")
    ax.set_xlabel("time since connect (s)")
    ax.set_ylabel("query latency (ms, log scale)")
    ax2.set_ylabel("upload progress (% of planned bytes sent, dashed; v = all loaded)")
    ax2.set_ylim(0, 105)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(_title(docs), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_prediction(docs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per strategy: measured latency (solid) and the simulator's (dashed)."""
    plt = _pyplot()
    shown = [d for d in docs if d["queries"]]
    cols = 3
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    for ax, d in zip(axes.flat, shown, strict=False):
        color = _COLORS.get(d["strategy"])
        qs = d["queries"]
        ax.plot([q["t"] for q in qs], [q["ms"] for q in qs], color=color, label="measured")
        pred = d.get("prediction") or {}
        pq = pred.get("queries") or []
        if pq:
            ax.plot([p[0] for p in pq], [p[1] for p in pq], "--", color="black", label="simulated")
        done = d["metrics"].get("upload_done_s")
        if done is not None:
            ax.axvline(done, color=color, alpha=0.5, linewidth=0.8)
        horizon = max(q["end"] for q in qs)
        pdone = (pred.get("metrics") or {}).get("upload_done_s")
        if pdone is not None and pdone <= horizon:
            ax.axvline(pdone, color="black", alpha=0.4, linewidth=0.8, linestyle=":")
        ax.set_xlim(0, horizon * 1.02)
        mape = (pred.get("errors") or {}).get("mape_pct")
        err = "-" if mape is None else f"{mape:.0f}%"
        late = "" if pdone is None or pdone <= horizon else f", sim. upload done {pdone:.0f} s"
        ax.set_title(f"{d['strategy']}: latency error (MAPE) {err}{late}", fontsize=9)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("s since connect", fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(_title(docs) + " - simulator vs measured", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _f(value: object, fmt: str = "{:.1f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def common_window(docs: Sequence[Mapping[str, Any]]) -> float | None:
    """The all_at_once run's upload time (else the longest upload): a window every
    strategy is compared on."""
    by = {d["strategy"]: d["metrics"].get("upload_done_s") for d in docs if d["status"] == "ok"}
    if by.get("all_at_once") is not None:
        return float(by["all_at_once"])
    done = [v for v in by.values() if v is not None]
    return max(done) if done else None


def _window_mean(doc: Mapping[str, Any], window: float | None) -> float | None:
    if window is None:
        return None
    ms = [q["ms"] for q in doc["queries"] if q["t"] < window]
    return sum(ms) / len(ms) if ms else None


def _group_table(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    window = common_window(docs)
    n = docs[0]["metrics"].get("n", 100) if docs else 100
    lines = [
        f"| strategy | queries | mean latency during upload (ms) | mean latency in first "
        f"{_f(window)} s (ms) | first offloaded query (s) | time to complete {n} queries (s) "
        f"| upload done (s) | mean latency after upload (ms) | simulated mean during upload "
        f"(ms) | simulator latency error (MAPE) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in docs:
        m = d["metrics"]
        if d["status"] != "ok":
            lines.append(f"| {d['strategy']} | {d['status']}: {d.get('reason', '')} |" + " |" * 8)
            continue
        pred = d.get("prediction") or {}
        pm = pred.get("metrics") or {}
        err = (pred.get("errors") or {}).get("mape_pct")
        done = m.get("upload_done_s")
        if d["strategy"] != "local" and done is None:
            done_text = f"not within {_f(d['timing'].get('elapsed_s'), '{:.0f}')} s"
        else:
            done_text = _f(done)
        t_n = m.get("time_to_n_s")
        t_n_text = _f(t_n) if t_n is not None else f"> {_f(d['timing'].get('elapsed_s'))}"
        lines.append(
            f"| {d['strategy']} | {m['queries']} | {_f(m.get('mean_during_upload_ms'))} | "
            f"{_f(_window_mean(d, window))} | {_f(m.get('first_offloaded_s'), '{:.2f}')} | "
            f"{t_n_text} | {done_text} | {_f(m.get('mean_after_upload_ms'))} | "
            f"{_f(pm.get('mean_during_upload_ms'))} | {_f(err, '{:.0f}%')} |"
        )
    return lines


def _pct(value: object) -> str:
    return _f(value, "{:+.0f}%")


def _prediction_table(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The simulator's metrics beside the measured ones, with the errors."""
    lines = [
        "| strategy | mean during upload: measured / simulated (ms) | error | upload done: "
        "measured / simulated (s) | error | first offloaded: measured / simulated (s) | "
        "per-query latency error: MAPE / median / mean signed | client's own per-query "
        "prediction error (MAPE) | error with the announced costs | planning (s) | first "
        "upload byte after session ready (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in docs:
        pred = d.get("prediction") or {}
        if d["status"] != "ok" or "metrics" not in pred:
            continue
        m, pm, e = d["metrics"], pred["metrics"], pred.get("errors") or {}
        announced = (pred.get("announced") or {}).get("errors") or {}
        timing = d.get("timing") or {}
        lines.append(
            f"| {d['strategy']} | {_f(m.get('mean_during_upload_ms'))} / "
            f"{_f(pm.get('mean_during_upload_ms'))} | {_pct(e.get('mean_during_upload_pct'))} | "
            f"{_f(m.get('upload_done_s'))} / {_f(pm.get('upload_done_s'))} | "
            f"{_pct(e.get('upload_done_pct'))} | {_f(m.get('first_offloaded_s'), '{:.2f}')} / "
            f"{_f(pm.get('first_offloaded_s'), '{:.2f}')} | {_f(e.get('mape_pct'), '{:.0f}%')} / "
            f"{_f(e.get('median_ape_pct'), '{:.0f}%')} / {_pct(e.get('mean_signed_pct'))} | "
            f"{_f(m.get('client_prediction_mape_pct'), '{:.0f}%')} | "
            f"{_pct(announced.get('mean_during_upload_pct'))} | "
            f"{_f(timing.get('planned_s'), '{:.2f}')} | "
            f"{_f(timing.get('first_byte_delay_ms'), '{:.1f}')} |"
        )
    return lines


def _window_table(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Mean latency in the lossless window W, measured and simulated, per strategy."""
    window = next(
        (d["metrics"].get("window_s") for d in docs if d["metrics"].get("window_s")), None
    )
    lines = [
        f"Lossless window W = {_f(window)} s (the model's raw weight bytes at the measured "
        "upload rate):",
        "",
        "| strategy | mean latency in W: measured / simulated (ms) | error | queries in W on "
        "base-stage weights: measured / simulated |",
        "|---|---|---|---|",
    ]
    for d in docs:
        if d["status"] != "ok":
            continue
        m = d["metrics"]
        pred = d.get("prediction") or {}
        pm, e = pred.get("metrics") or {}, pred.get("errors") or {}
        lines.append(
            f"| {d['strategy']} | {_f(m.get('mean_in_window_ms'))} / "
            f"{_f(pm.get('mean_in_window_ms'))} | {_pct(e.get('mean_in_window_pct'))} | "
            f"{m.get('approximate_in_window', 0)} / {pm.get('approximate_in_window', 0)} |"
        )
    return lines


def _in_window(doc: Mapping[str, Any] | None, key: str) -> float | None:
    if doc is None or doc["status"] != "ok":
        return None
    source = doc["metrics"] if key == "measured" else (doc.get("prediction") or {}).get("metrics")
    value = (source or {}).get("mean_in_window_ms")
    return float(value) if value else None


def precision_lines(groups: Sequence[Sequence[Mapping[str, Any]]]) -> list[str]:
    """The precision-first strategies against ``ionn`` in the lossless window, per group
    and as geometric means, measured and simulated (the simulator replaying the same
    runs); empty when none of them ran."""
    rows: dict[str, list[tuple[str, float, float | None]]] = {s: [] for s in _PRECISION_FIRST}
    out = ["| group | strategy | ionn / strategy in W: measured | simulated |", "|---|---|---|---|"]
    for docs in groups:
        by = {d["strategy"]: d for d in docs}
        base = (_in_window(by.get(_BASELINE), "measured"), _in_window(by.get(_BASELINE), "sim"))
        for strategy in _PRECISION_FIRST:
            mine = (_in_window(by.get(strategy), "measured"), _in_window(by.get(strategy), "sim"))
            if base[0] is None or mine[0] is None:
                continue
            sim = base[1] / mine[1] if base[1] and mine[1] else None
            group = f"{docs[0]['scenario']['name']} / {docs[0]['model']['name']}"
            rows[strategy].append((group, base[0] / mine[0], sim))
            out.append(
                f"| {group} | {strategy} | {base[0] / mine[0]:.3f}x | {_f(sim, '{:.3f}x')} |"
            )
    if not any(rows.values()):
        return []
    lines = ["", "## Precision-first against ionn (mean latency in the lossless window W)", ""]
    lines += [*out, ""]
    for strategy, found in rows.items():
        if not found:
            continue
        measured = math.exp(sum(math.log(g) for _, g, _ in found) / len(found))
        sims = [s for _, _, s in found if s]
        simulated = math.exp(sum(map(math.log, sims)) / len(sims)) if sims else None
        worst = min(found, key=lambda r: r[1])
        agree = "-" if simulated is None else f"{(measured / simulated - 1) * 100:+.0f}%"
        lines.append(
            f"- {strategy}: geomean gain over ionn {measured:.3f}x measured, "
            f"{_f(simulated, '{:.3f}x')} simulated (measured vs simulated {agree}); "
            f"worst group {worst[0]} {worst[1]:.3f}x; no more than 3% behind ionn in every "
            f"group: {'yes' if worst[1] >= 1 / 1.03 else 'no'} ({len(found)} groups)"
        )
    return lines


def _link_lines(doc: Mapping[str, Any]) -> list[str]:
    link = doc["link"]
    lines = [f"- link: {link['message']}"]
    for direction, p in link.get("measured", {}).items():
        rate = p.get("measured_rate_bps")
        conf = p.get("configured_rate_bps")
        rtt = p.get("rtt_ms_p50")
        lines.append(
            f"  - {direction}: configured {_f(conf and conf / 1e6)} Mbit/s, "
            f"{_f(p.get('configured_rtt_ms'))} ms RTT; measured {_f(rate and rate / 1e6)} "
            f"Mbit/s ({_f(rate and conf and 100 * rate / conf)}% of configured), "
            f"RTT p50 {_f(rtt, '{:.2f}')} ms"
        )
    dev = doc["device"]
    lines.append(f"- device: {dev['describe']}")
    iso = doc.get("isolation")
    lines.append(f"- isolation: {iso['describe'] if iso else 'not recorded (shared)'}")
    return lines


def summary_markdown(
    groups: Sequence[Sequence[Mapping[str, Any]]],
    *,
    command: str,
    machine: Mapping[str, Any],
    versions: Mapping[str, Any],
    plots: Mapping[tuple[str, str], Sequence[str]],
) -> str:
    """The whole ``summary.md``."""
    out = ["# ionn-bench results", "", f"Command: `{command}`", ""]
    out.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    out.append("")
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out.append("")
    out.append(
        "Times are seconds since the client connected; latency is from issuing a query to "
        "its result, queries back to back. 'During upload' means issued before the upload "
        "finished (the whole run for local, or when the upload did not finish). The "
        "common-window column compares every strategy over the same span (all_at_once's "
        "upload time). The simulator replays each run's own upload plan with the probed "
        "link (see ionn_net.bench.predict)."
    )
    for docs in groups:
        if not docs:
            continue
        d = docs[0]
        out += ["", f"## {d['scenario']['name']} / {d['model']['name']}", ""]
        out += _link_lines(d)
        model = d["model"]
        out.append(
            f"- model: {model['name']} ({model['layers']} layers, "
            f"{model['weight_bytes'] / 1e6:.1f} MB weights, upload codec ratio "
            f"{model.get('weight_ratio', 1.0):.2f}); whole model here {model['whole_ms']:.1f} ms"
        )
        out.append("")
        out += _group_table(docs)
        out += [
            "",
            "Simulator (replaying each run's plan, the partitions the client really sent, "
            "with the server speed, load times, loader and client contention, client "
            "compile, planning time and pacing rate the run measured; 'announced': with the "
            "server's announced cost model and the probed link instead) vs measured:",
            "",
        ]
        out += _prediction_table(docs)
        out += ["", *_window_table(docs)]
        for rel in plots.get((d["scenario"]["name"], d["model"]["name"]), ()):
            out += ["", f"![{rel}]({rel})"]
    out += precision_lines(groups)
    return "\n".join(out) + "\n"
