"""proto.scheduler (§8.2): control first, urgency classes, FIFO vs round-robin, HOL bound."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_pair import Pair, parse

from ionn_net.proto import DataFrame, HeadersFrame, PingFrame, Scheduler, Stream


def _stream(sid: int, urgency: int, incremental: bool, seq: int) -> Stream:
    return Stream(
        sid,
        local_initiated=True,
        urgency=urgency,
        incremental=incremental,
        seq=seq,
        send_limit=1,
        recv_limit=1,
    )


def _order(sched: Scheduler, n: int, eligible: object = None) -> list[int]:
    pred = eligible if callable(eligible) else (lambda s: True)
    out = []
    for _ in range(n):
        s = sched.pick(pred)
        out.append(0 if s is None else s.stream_id)
    return out


def test_most_urgent_class_first_and_fifo_by_open_order() -> None:
    sched = Scheduler()
    late_opened = _stream(9, 3, False, seq=5)
    early_opened = _stream(7, 3, False, seq=2)
    urgent = _stream(11, 1, False, seq=9)
    for s in (late_opened, early_opened, urgent):
        sched.add(s)
    # Non-incremental: one stream at a time, in open order, regardless of add order.
    assert _order(sched, 3) == [11, 11, 11]
    sched.remove(urgent)
    assert _order(sched, 2) == [7, 7]
    sched.remove(early_opened)
    assert _order(sched, 1) == [9]


def test_incremental_streams_round_robin_after_non_incremental() -> None:
    sched = Scheduler()
    a, b, c = (_stream(i, 5, True, seq=i) for i in (1, 3, 5))
    fifo = _stream(7, 5, False, seq=7)
    for s in (a, b, c):
        sched.add(s)
    assert _order(sched, 6) == [1, 3, 5, 1, 3, 5]
    sched.add(fifo)
    assert _order(sched, 2) == [7, 7]


def test_ineligible_streams_are_skipped_and_control_frames_queue_fifo() -> None:
    sched = Scheduler()
    blocked = _stream(1, 0, False, seq=1)
    ready = _stream(3, 6, True, seq=2)
    sched.add(blocked)
    sched.add(ready)
    assert _order(sched, 2, lambda s: s is not blocked) == [3, 3]
    assert sched.any_eligible(lambda s: s is blocked)
    assert not sched.any_eligible(lambda s: False)
    sched.push_control(b"a")
    sched.push_control(b"bb")
    assert sched.control_bytes == 3
    assert [sched.pop_control(), sched.pop_control(), sched.pop_control()] == [b"a", b"bb", None]
    sched.add(blocked)  # idempotent
    assert sched.scheduled_streams == 2
    sched.clear_streams()
    assert sched.pick(lambda s: True) is None and not blocked.scheduled


def test_control_frames_go_ahead_of_a_data_backlog() -> None:
    pair = Pair()
    c = pair.client
    sid = c.open_stream({"m": "blob", "body_len": 1 << 20}, urgency=5, incremental=True)
    c.send_data(sid, bytes(1 << 20), end_stream=True)
    c.next_frame()
    c.next_frame()
    c.ping(b"pingpong")
    assert isinstance(parse(c.next_frame() or b"")[0], PingFrame)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    uploads=st.lists(
        st.tuples(st.integers(4, 7), st.booleans(), st.integers(1, 1 << 20)),
        min_size=1,
        max_size=4,
    ),
    emitted_before=st.integers(0, 40),
    query_len=st.integers(0, 100_000),
)
def test_a_new_query_goes_out_within_two_frames_of_any_backlog(
    uploads: list[tuple[int, bool, int]], emitted_before: int, query_len: int
) -> None:
    pair = Pair()
    c = pair.client
    for urgency, incremental, size in uploads:
        sid = c.open_stream(
            {"m": "blob", "body_len": size}, urgency=urgency, incremental=incremental
        )
        c.send_data(sid, bytes(size), end_stream=True)
    for _ in range(emitted_before):
        c.next_frame()
    head = {"m": "query", "body_len": query_len}
    qid = c.open_stream(head, urgency=1, end_stream=False)
    c.send_data(qid, b"q" * query_len, end_stream=True)
    # Opening HEADERS of earlier streams still queued go first: §6.1.1 makes ids leave in
    # order. They are a few dozen bytes each; besides them, at most one other frame may
    # precede the query.
    first_two: list[object] = []
    others = 0
    while others < 2:
        raw = c.next_frame()
        if raw is None:
            break
        frame = parse(raw)[0]
        first_two.append(frame)
        if isinstance(frame, HeadersFrame) and frame.stream_id == qid:
            break
        if not (isinstance(frame, HeadersFrame) and frame.stream_id < qid):
            others += 1
    assert any(isinstance(f, HeadersFrame) and f.stream_id == qid for f in first_two)
    assert others <= 1
    # The rest of the query follows before any upload frame (one stream at a time, §8.2).
    remaining = query_len - sum(
        f.decoded_length for f in first_two if isinstance(f, DataFrame) and f.stream_id == qid
    )
    while remaining:
        frame = parse(c.next_frame() or b"")[0]
        assert isinstance(frame, DataFrame) and frame.stream_id == qid
        remaining -= frame.decoded_length
