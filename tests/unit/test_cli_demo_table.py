"""The summary table of ``ionn-demo``: a '-' where there is nothing to average."""

from __future__ import annotations

from ionn_net.cli import RunSummary, _table


def test_demo_table_shows_a_dash_where_nothing_was_measured() -> None:
    local = RunSummary("local", latencies=[(0.5, 500.0, 0), (1.0, 500.0, 0)])
    ours = RunSummary(
        "ours", latencies=[(0.5, 480.0, 0), (2.0, 300.0, 10), (3.0, 100.0, 20)], upload_done_s=2.5
    )
    rows = _table([local, ours]).splitlines()
    assert rows[2] == "| local | 2 | 500.0 | - | - | - | 500.0 |"
    # during the upload: the queries that started by 2.5 s; after it: the one at 3.0 s;
    # the last 3 s: the queries that ended from 0.0 s on, all three
    assert rows[3] == "| ours | 3 | 390.0 | 2.00 | 2.5 | 100.0 | 293.3 |"
    assert "nan" not in "\n".join(rows)


def test_demo_last_seconds_are_the_steady_state() -> None:
    # After a 10 s upload the first seconds are slower (the server compiles the chained
    # pieces as one slice); the last 3 s average only what ended from 13 s on.
    ours = RunSummary(
        "ours",
        latencies=[(11.0, 170.0, 176), (12.5, 150.0, 176), (13.5, 120.0, 176), (16.0, 110.0, 176)],
        upload_done_s=10.0,
    )
    assert ours.mean_after() == 137.5
    assert ours.mean_last() == 115.0
    assert RunSummary("local").mean_last() != RunSummary("local").mean_last()  # nan: no query


def test_demo_shows_no_upload_bar_for_local() -> None:
    import io

    from ionn_net.cli import _Printer

    printer = _Printer(io.StringIO(), quiet=True)
    assert printer.progress_callback("local") is None
    assert printer.progress_callback("ours") == printer.bar


def test_demo_precision_adds_a_row_for_the_planner_precision_first() -> None:
    from ionn_net.cli import _demo_parser, demo_runs

    args = _demo_parser().parse_args(["--precision", "8bit-first"])
    assert demo_runs(args.planner, args.precision, no_compare=False) == [
        ("local", "exact"),
        ("all_at_once", "exact"),
        ("ours", "exact"),
        ("ours", "8bit-first"),
    ]
    assert demo_runs("ours", "exact", no_compare=False)[-1] == ("ours", "exact")
    assert demo_runs("ionn", "16bit-first", no_compare=True) == [
        ("ionn", "exact"),
        ("ionn", "16bit-first"),
    ]
    approx = RunSummary("ours 8bit-first", latencies=[(0.5, 80.0, 10)], upload_done_s=1.0)
    rows = _table([approx]).splitlines()
    assert rows[2].startswith("| ours 8bit-first | 1 | 80.0 | 0.50 |")
