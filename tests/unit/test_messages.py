"""ionn_net.messages: every §10 message's head, its parse, and the dispatch by ``"m"``.

The heads below are the ones the client and the server put on the wire (member order
included: heads are JSON in insertion order); a message must produce exactly them and
parse them back to itself.
"""

from __future__ import annotations

from typing import Any

import pytest

from ionn_net.messages import (
    REPLIES,
    REQUESTS,
    Auth,
    Blob,
    BlobOk,
    Challenge,
    Error,
    Fetch,
    FetchOk,
    Grant,
    GrantOk,
    Have,
    HaveOk,
    Hello,
    Holdings,
    Load,
    LoadOk,
    Manifest,
    ManifestOk,
    MemberError,
    ProbeQuery,
    ProbeResult,
    ProbeUpload,
    ProbeUploadOk,
    Pull,
    PullOk,
    Push,
    PushOk,
    Query,
    Redeem,
    RedeemOk,
    RemoteError,
    RequestError,
    Result,
    Stage,
    StageBlob,
    StageOk,
    Timings,
    TimingsOk,
    UnexpectedReply,
    Welcome,
    check_body_len,
    parse_probe,
    parse_reply,
    parse_request,
    request_type,
)
from ionn_net.proto.wire import encode_head

D1, D2, KEY, NONCE = "a" * 64, "b" * 64, "c" * 32, "d" * 32
DESC = {"ref": "x:0", "dtype": "float32", "shape": [1, 2], "nbytes": 8}
LIMITS = {"max_message_size": 5, "max_batch": 1, "max_models": 4, "max_bytes": 9, "max_queries": 8}

#: (message, the head it is on the wire)
GOLDEN: list[tuple[Any, dict[str, Any]]] = [
    (
        Hello(client="ionn_net", session=KEY, nonce=NONCE),
        {"m": "hello", "client": "ionn_net", "session": KEY, "nonce": NONCE},
    ),
    (Challenge(nonce=NONCE, proof="e" * 64), {"m": "challenge", "nonce": NONCE, "proof": "e" * 64}),
    (Auth(proof="f" * 64), {"m": "auth", "proof": "f" * 64}),
    (
        Welcome(server="ionn_net/0.1.0", session=KEY, cost_model={"format": "x"}, limits=LIMITS),
        {
            "m": "welcome",
            "server": "ionn_net/0.1.0",
            "session": KEY,
            "cost_model": {"format": "x"},
            "limits": LIMITS,
        },
    ),
    (Manifest(model=D1, body_len=12), {"m": "manifest", "model": D1, "body_len": 12}),
    (
        ManifestOk(
            model=D1,
            holdings=Holdings(
                blobs_held=(D2,),
                partial={D1: 5},
                layers_ready=("a", "b"),
                refused={"c": "why"},
                blobs_public=(D1,),
            ),
        ),
        {
            "m": "manifest_ok",
            "model": D1,
            "blobs_held": [D2],
            "partial": {D1: 5},
            "layers_ready": ["a", "b"],
            "refused": {"c": "why"},
            "blobs_public": [D1],
        },
    ),
    (Have(model=D1), {"m": "have", "model": D1}),
    (
        HaveOk(holdings=Holdings()),
        {
            "m": "have_ok",
            "blobs_held": [],
            "partial": {},
            "layers_ready": [],
            "refused": {},
            "blobs_public": [],
        },
    ),
    (
        Blob(model=D1, sha256=D2, size=10, offset=2, body_len=8),
        {"m": "blob", "model": D1, "sha256": D2, "size": 10, "offset": 2, "body_len": 8},
    ),
    (
        BlobOk(sha256=D2, offset=10, complete=True),
        {"m": "blob_ok", "sha256": D2, "offset": 10, "complete": True},
    ),
    (
        Load(model=D1, layers=("a", "b"), prepare=(("a",), ("a", "b"))),
        {"m": "load", "model": D1, "layers": ["a", "b"], "prepare": [["a"], ["a", "b"]]},
    ),
    (
        LoadOk(layers_ready=("a",), prepared=(("a",),), load_ms=12.5),
        {"m": "load_ok", "layers_ready": ["a"], "prepared": [["a"]], "load_ms": 12.5},
    ),
    (
        Query(model=D1, qid="q1", deadline_ms=900, run=("a",), tensors=[DESC], body_len=8),
        {
            "m": "query",
            "model": D1,
            "qid": "q1",
            "deadline_ms": 900,
            "run": ["a"],
            "tensors": [DESC],
            "body_len": 8,
        },
    ),
    (
        Result(qid="q1", ran=("a", "b"), last="b", tensors=[DESC], server_ms=1.5, body_len=8),
        {
            "m": "result",
            "qid": "q1",
            "ran": ["a", "b"],
            "last": "b",
            "tensors": [DESC],
            "server_ms": 1.5,
            "body_len": 8,
        },
    ),
    (
        Error(code="offset_conflict", message="resume at 5", offset=5),
        {"m": "error", "code": "offset_conflict", "message": "resume at 5", "offset": 5},
    ),
    (
        Error(code="missing_blobs", message="blobs missing", layers=("a",)),
        {"m": "error", "code": "missing_blobs", "message": "blobs missing", "layers": ["a"]},
    ),
    (
        Timings(model="a" * 64, wait_ms=500),
        {"m": "timings", "model": "a" * 64, "wait_ms": 500},
    ),
    (
        TimingsOk(model="a" * 64, done=True, call_ms=0.25, body_len=40),
        {"m": "timings_ok", "model": "a" * 64, "done": True, "call_ms": 0.25, "body_len": 40},
    ),
    (ProbeQuery(body_len=4), {"m": "query", "body_len": 4}),
    (
        ProbeResult(body_len=4, t_head=1.0, t_body=2.0, lag_s=0.5),
        {"m": "result", "body_len": 4, "t_head": 1.0, "t_body": 2.0, "lag_s": 0.5},
    ),
    (ProbeUpload(body_len=4), {"m": "upload", "body_len": 4}),
    (ProbeUploadOk(received=4), {"m": "upload_ok", "received": 4}),
    # §15 handoff
    (Grant(model=D1, ttl_s=60), {"m": "grant", "model": D1, "ttl_s": 60}),
    (
        GrantOk(grant="g1.abc.def", ttl_s=60, uses=4),
        {"m": "grant_ok", "grant": "g1.abc.def", "ttl_s": 60, "uses": 4},
    ),
    (
        Redeem(grant="g1.abc.def", model=D1, tag=D2),
        {"m": "redeem", "grant": "g1.abc.def", "model": D1, "tag": D2},
    ),
    (RedeemOk(model=D1, blobs={D2: 7}), {"m": "redeem_ok", "model": D1, "blobs": {D2: 7}}),
    (
        Pull(model=D1, sha256=D2, offset=4, length=3),
        {"m": "pull", "model": D1, "sha256": D2, "offset": 4, "length": 3},
    ),
    (
        PullOk(sha256=D2, offset=4, body_len=3),
        {"m": "pull_ok", "sha256": D2, "offset": 4, "body_len": 3},
    ),
    (
        Fetch(model=D1, source="10.0.0.1:7000", grant="g1.a.b", blobs=(D2,), deadline_ms=9),
        {
            "m": "fetch",
            "model": D1,
            "source": "10.0.0.1:7000",
            "grant": "g1.a.b",
            "blobs": [D2],
            "deadline_ms": 9,
        },
    ),
    (
        FetchOk(fetched=(D2,), failed={D1: "unreachable"}, source_error="unreachable"),
        {
            "m": "fetch_ok",
            "fetched": [D2],
            "failed": {D1: "unreachable"},
            "source_error": "unreachable",
            "blobs_held": [],
            "partial": {},
            "layers_ready": [],
            "refused": {},
            "blobs_public": [],
        },
    ),
    (
        Push(model=D1, target="[::1]:7001", blobs=(D2,), deadline_ms=9),
        {"m": "push", "model": D1, "target": "[::1]:7001", "blobs": [D2], "deadline_ms": 9},
    ),
    (
        PushOk(pushed=(D2,), failed={}, target_error=None),
        {"m": "push_ok", "pushed": [D2], "failed": {}},
    ),
    (
        Stage(model=D1, tag=D2, body_len=5),
        {"m": "stage", "model": D1, "tag": D2, "body_len": 5},
    ),
    (StageOk(model=D1), {"m": "stage_ok", "model": D1}),
    (
        StageBlob(model=D1, tag=D2, sha256=D2, size=9, offset=0, body_len=9),
        {
            "m": "stage_blob",
            "model": D1,
            "tag": D2,
            "sha256": D2,
            "size": 9,
            "offset": 0,
            "body_len": 9,
        },
    ),
    (
        Manifest(model=D1, body_len=12, public=True),
        {"m": "manifest", "model": D1, "body_len": 12, "public": True},
    ),
    (
        Manifest(model=D1, body_len=12, public=("a", "b")),
        {"m": "manifest", "model": D1, "body_len": 12, "public": ["a", "b"]},
    ),
]


@pytest.mark.parametrize(("message", "head"), GOLDEN, ids=lambda v: type(v).__name__)
def test_each_message_writes_its_wire_head_and_parses_it_back(
    message: Any, head: dict[str, Any]
) -> None:
    assert encode_head(message.to_head()) == encode_head(head)  # member order included
    assert type(message).parse(head) == message
    assert type(message).parse({**head, "later": [1, {"x": 2}]}) == message  # §10.1.3


def test_every_section_10_message_has_a_golden_head() -> None:
    covered = {type(m) for m, _ in GOLDEN}
    assert set(REQUESTS.values()) | set(REPLIES.values()) <= covered


def _required(message: Any, head: dict[str, Any]) -> list[tuple[Any, dict[str, Any], str]]:
    optional = {"client", "prepare", "prepared", "offset", "layers", "body_len", "proof", "wait_ms"}
    optional |= {"source_error", "target_error"}  # §15: only when the other server failed
    optional |= {"public", "blobs_public"}  # §10.3.4, §10.3.3: absent means none
    cls = type(message)
    return [(cls, head, k) for k in head if k != "m" and k not in optional]


#: Carried as received and checked where they are used: the cost model when the client
#: adopts it (§10.10, invalid means fall back), tensor descriptors with their body (§9).
AS_RECEIVED = frozenset({"cost_model", "tensors"})
REQUIRED = [case for m, h in GOLDEN for case in _required(m, h) if type(m) is not Error]


@pytest.mark.parametrize(("cls", "head", "member"), REQUIRED, ids=lambda v: str(v)[:24])
def test_a_missing_or_malformed_member_is_named(
    cls: Any, head: dict[str, Any], member: str
) -> None:
    for bad in (None, {"nested": True}):
        broken = {k: v for k, v in head.items() if k != member}
        if bad is not None:
            broken[member] = bad
        if member in AS_RECEIVED:
            assert cls.parse(broken)
            continue
        with pytest.raises(MemberError) as caught:
            cls.parse(broken)
        named = caught.value.member
        assert named.split(".")[0] == member
        assert caught.value.code == "bad_request"
        assert str(caught.value).startswith(f"{named}: expected ")
        assert caught.value.got in (bad, True)  # True: the value inside the bad object


def test_member_errors_say_what_was_expected_and_what_arrived() -> None:
    with pytest.raises(MemberError, match=r"^session: expected 32 lowercase hex digits, got 'X'$"):
        Hello.parse({"m": "hello", "session": "X", "nonce": NONCE})
    with pytest.raises(MemberError, match=r"^deadline_ms: expected an integer in 1\.\.3600000"):
        Query.parse({**GOLDEN[12][1], "deadline_ms": 0})
    with pytest.raises(MemberError, match=r"^run: expected layer names matching"):
        Query.parse({**GOLDEN[12][1], "run": ["ok", "not ok"]})
    with pytest.raises(MemberError, match=r"^body_len: expected an integer >= 0, got -1$"):
        Blob.parse({**GOLDEN[8][1], "body_len": -1})
    with pytest.raises(MemberError, match=r"^complete: expected true or false, got 1$"):
        BlobOk.parse({**GOLDEN[9][1], "complete": 1})
    with pytest.raises(MemberError, match=r"^prepare: expected a list of at most"):
        Load.parse({**GOLDEN[10][1], "prepare": "a"})
    with pytest.raises(MemberError, match=r"^partial: expected digest keys"):
        HaveOk.parse({**GOLDEN[7][1], "partial": {D1: -1}})
    with pytest.raises(MemberError, match=r"^limits.max_batch: expected an integer, got 1.5$"):
        Welcome.parse({**GOLDEN[3][1], "limits": {"max_batch": 1.5}})
    with pytest.raises(MemberError, match=r"^server_ms: expected a number"):
        Result.parse({**GOLDEN[13][1], "server_ms": float("nan")})


def test_a_malformed_proof_is_a_wrong_proof_not_a_bad_request() -> None:
    """§10.2.3: whatever its form, a wrong proof ends in AUTH_FAILED, decided by the
    receiver; parsing never refuses it."""
    assert Auth.parse({"m": "auth", "proof": 5}).proof is None
    assert Auth.parse({"m": "auth"}).proof is None
    assert Challenge.parse({"m": "challenge", "nonce": NONCE, "proof": []}).proof is None
    assert Hello.parse({"m": "hello", "session": KEY, "nonce": NONCE, "client": 3}).client is None


def test_requests_are_dispatched_by_m() -> None:
    for message, head in GOLDEN:
        if type(message) in REQUESTS.values():
            assert request_type(head) is type(message)
            assert parse_request(head) == message
    for kind in ("nonsense", "welcome", "error"):
        with pytest.raises(RequestError) as caught:
            request_type({"m": kind})
        assert caught.value.code == "unknown_message"
        assert str(caught.value) == f"m: unknown message type {kind!r}"


def test_replies_are_parsed_as_expected_errors_raise() -> None:
    ok_head = GOLDEN[9][1]
    assert parse_reply(ok_head, BlobOk) == GOLDEN[9][0]
    assert parse_reply(GOLDEN[3][1], Challenge, Welcome) == GOLDEN[3][0]
    with pytest.raises(RemoteError) as caught:
        parse_reply(GOLDEN[14][1], BlobOk)
    assert caught.value.code == "offset_conflict" and caught.value.error.offset == 5
    with pytest.raises(UnexpectedReply, match="expected blob_ok, got 'load_ok'"):
        parse_reply(GOLDEN[11][1], BlobOk)
    with pytest.raises(MemberError):
        parse_reply({**ok_head, "offset": "x"}, BlobOk)


def test_refusals_become_error_messages() -> None:
    error = Error.of(RequestError("missing_blobs", "blobs missing for ['a']", layers=["a"]))
    assert error.to_head() == {
        "m": "error",
        "code": "missing_blobs",
        "message": "blobs missing for ['a']",
        "layers": ["a"],
    }
    with pytest.raises(ValueError, match="unknown error code"):
        RequestError("no_such_code", "x")
    with pytest.raises(RequestError, match=r"^body_len: expected at most 4, got 5$") as caught:
        check_body_len(5, limit=4)
    assert caught.value.code == "limit_exceeded"
    assert check_body_len(4, limit=4) == 4


def test_probe_messages_are_dispatched_by_m() -> None:
    assert parse_probe({"m": "upload", "body_len": 3}) == ProbeUpload(body_len=3)
    with pytest.raises(MemberError, match=r"^m: expected one of"):
        parse_probe({"m": "hello"})
