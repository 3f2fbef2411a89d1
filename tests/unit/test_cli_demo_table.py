"""The summary table of ``ionn-demo``: a '-' where there is nothing to average."""

from __future__ import annotations

from ionn_net.cli import RunSummary, _table


def test_demo_table_shows_a_dash_where_nothing_was_measured() -> None:
    local = RunSummary("local", latencies=[(0.5, 500.0, 0), (1.0, 500.0, 0)])
    ours = RunSummary(
        "ours", latencies=[(0.5, 480.0, 0), (2.0, 300.0, 10), (3.0, 100.0, 20)], upload_done_s=2.5
    )
    rows = _table([local, ours]).splitlines()
    assert rows[2] == "| local | 2 | 500.0 | - | - | - |"
    # during the upload: the queries that started by 2.5 s; after it: the one at 3.0 s
    assert rows[3] == "| ours | 3 | 390.0 | 2.00 | 2.5 | 100.0 |"
    assert "nan" not in "\n".join(rows)
