"""protocol.md §15 (handoff between servers) and §14.7 (server peers), against real EdgeServers.

The client is the reference peer (tests/refpeer/handoff.py: it moves as §15.4.4 says); servers are
peers of each other on loopback (tests/helpers/peered.py). Where a test needs a misbehaving
previous server, the reference peer plays one (:class:`~tests.refpeer.handoff.ReferenceSource`).
Each test that refuses something also checks that what was refused changed nothing, and that a
well-behaved exchange on the same servers still works.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from tests.helpers.edge_server import running_server
from tests.helpers.peered import dense_model, free_port, name, peered_servers, server_peering
from tests.refpeer import RefPeer
from tests.refpeer.handoff import (
    ReferenceSource,
    SourceBehaviour,
    move,
    open_session,
    random_key,
    stage_tag,
    upload,
)

from ionn_net.handoff import HandoffConfig
from ionn_net.server import ServerConfig

pytestmark = pytest.mark.timeout(120)

BODY, DIGEST, BLOBS, BUILDER = dense_model(0)
OTHER_BODY, OTHER_DIGEST, OTHER_BLOBS, _ = dense_model(1)


def seeded(port: int, key: str, body: bytes = BODY, blobs: dict[str, bytes] = BLOBS) -> RefPeer:
    """A session on ``port`` holding the whole model (manifest and every blob)."""
    peer = open_session(port, key)
    digest = hashlib.sha256(body).hexdigest()
    assert peer.request({"m": "manifest", "model": digest}, body).head["m"] == "manifest_ok"
    upload(peer, digest, blobs, {})
    return peer


def grant_of(peer: RefPeer, model: str = DIGEST, ttl_s: int = 600) -> dict[str, Any]:
    reply = peer.request({"m": "grant", "model": model, "ttl_s": ttl_s}).head
    assert reply["m"] == "grant_ok", reply
    return dict(reply)


def redeem(port: int, grant: str, tag: str, model: str = DIGEST) -> tuple[RefPeer, dict[str, Any]]:
    """A peer connection (a session of its own) that redeems ``grant``."""
    peer = open_session(port, random_key())
    reply = peer.request({"m": "redeem", "grant": grant, "model": model, "tag": tag}).head
    return peer, dict(reply)


def fetch(peer: RefPeer, source: str, grant: str, blobs: list[str], model: str = DIGEST) -> Any:
    head = {"m": "fetch", "model": model, "source": source, "grant": grant, "blobs": blobs,
            "deadline_ms": 30_000}  # fmt: skip
    return peer.request(head).head


def load_and_query(peer: RefPeer) -> np.ndarray:
    """Build every layer and run one query on it; the output (the model works)."""
    layers = ["d1", "d2", "d3"]
    loaded = peer.request({"m": "load", "model": DIGEST, "layers": layers}).head
    assert loaded["m"] == "load_ok", loaded
    x = np.linspace(-1, 1, 64, dtype="<f4").reshape(1, 64)
    desc = {"ref": "x:0", "dtype": "float32", "shape": [1, 64], "nbytes": x.nbytes}
    head = {"m": "query", "model": DIGEST, "qid": "q", "deadline_ms": 20_000, "run": layers,
            "tensors": [desc]}  # fmt: skip
    reply = peer.request(head, x.tobytes())
    assert reply.head["m"] == "result", reply.head
    return np.frombuffer(reply.body, "<f4")


@pytest.fixture(scope="module")
def two() -> Iterator[list[Any]]:
    """Two peered servers shared by the tests that need nothing special."""
    with peered_servers(2) as servers:
        yield servers


# ----- §15.1 peers --------------------------------------------------------------------------


@pytest.mark.spec("15.1")
def test_fetch_and_push_name_only_peers(two: list[Any]) -> None:
    a, b = two
    key = random_key()
    src = ReferenceSource(DIGEST, BLOBS)
    with src.serving() as rogue_port:
        on_a = seeded(a.port, key)
        grant = grant_of(on_a)["grant"]
        outside = name(rogue_port)  # a listening server, but not in anyone's peer table
        push = {"m": "push", "model": DIGEST, "target": outside, "blobs": list(BLOBS),
                "deadline_ms": 5000}  # fmt: skip
        assert on_a.request(push).head["code"] == "unknown_peer"
        on_b, _, _ = move(b.port, key, BODY, {}, source=None, grant=None)
        assert fetch(on_b, outside, grant, list(BLOBS))["code"] == "unknown_peer"
        assert src.requests == []  # nobody connected there
        held = on_b.request({"m": "have", "model": DIGEST}).head
        assert held["blobs_held"] == []  # refused: nothing changed
        assert fetch(on_b, name(a.port), grant, list(BLOBS))["m"] == "fetch_ok"  # a peer works


@pytest.mark.spec("15.1")
def test_a_peer_connection_says_hello_with_a_key_of_its_own() -> None:
    src = ReferenceSource(DIGEST, BLOBS)
    with src.serving() as port, server_peering(port) as b:
        key = random_key()
        on_b, _, _ = move(b.port, key, BODY, {}, source=None, grant=None)
        reply = fetch(on_b, name(port), "g1.x.y", list(BLOBS))
        assert reply["m"] == "fetch_ok" and sorted(reply["fetched"]) == sorted(BLOBS), reply
    hellos = [r for r in src.requests if r["m"] == "hello"]
    assert hellos and all(h["session"] != key for h in hellos)
    assert [r["m"] for r in src.requests][:2] == ["hello", "redeem"]


# ----- §15.2 grants ---------------------------------------------------------------------------


@pytest.mark.spec("15.2.1")
def test_a_grant_needs_the_sessions_manifest_and_is_capped(two: list[Any]) -> None:
    a, _ = two
    peer = open_session(a.port, random_key())
    reply = peer.request({"m": "grant", "model": DIGEST, "ttl_s": 60}).head
    assert reply["m"] == "error" and reply["code"] == "unknown_model"
    assert peer.request({"m": "manifest", "model": DIGEST}, BODY).head["m"] == "manifest_ok"
    ok = grant_of(peer, ttl_s=86400)
    assert ok["ttl_s"] == 600 and ok["uses"] == 4  # §14.7's caps
    assert isinstance(ok["grant"], str) and 0 < len(ok["grant"]) <= 1024


@pytest.mark.spec("15.2.2")
def test_a_grant_verifies_only_at_its_issuer(two: list[Any]) -> None:
    a, b = two
    key = random_key()
    grant = grant_of(seeded(a.port, key))["grant"]
    seeded(b.port, key)  # B even holds the same session and model: still not its grant
    _, at_b = redeem(b.port, grant, stage_tag(key))
    assert at_b["code"] == "bad_grant", at_b
    _, at_a = redeem(a.port, grant, stage_tag(key))
    assert at_a["m"] == "redeem_ok" and set(at_a["blobs"]) == set(BLOBS)


def _tampered(grant: str) -> list[str]:
    prefix, payload, mac = grant.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc["exp"] += 10_000
    longer = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return [
        f"{prefix}.{longer}.{mac}",  # a longer life, signature kept
        f"{prefix}.{payload}.{mac[:-2]}AA",  # the signature altered
        f"g2.{payload}.{mac}",  # another format
        "g1.e30.AAAA",  # "{}" signed by nobody
        "not-a-grant",
    ]


@pytest.mark.spec("15.2.3")
def test_forged_grants_are_refused_unread_and_consume_nothing() -> None:
    with peered_servers(2, handoff={"grant_uses": 2}) as (a, _):
        key = random_key()
        grant = grant_of(seeded(a.port, key))["grant"]
        for forged in _tampered(grant):
            _, reply = redeem(a.port, forged, stage_tag(key))
            assert reply["m"] == "error" and reply["code"] == "bad_grant", (forged, reply)
        for _ in range(2):  # both uses are still there
            _, reply = redeem(a.port, grant, stage_tag(key))
            assert reply["m"] == "redeem_ok", reply


@pytest.mark.spec("15.2.3")
def test_expired_and_out_of_scope_grants_are_refused_and_change_nothing() -> None:
    with peered_servers(2, handoff={"grant_uses": 1}) as (a, _):
        key = random_key()
        on_a = seeded(a.port, key)
        seeded(a.port, random_key(), OTHER_BODY, OTHER_BLOBS)
        assert on_a.request({"m": "manifest", "model": OTHER_DIGEST}, OTHER_BODY).head
        grant = grant_of(on_a)["grant"]
        _, other_model = redeem(a.port, grant, stage_tag(key), model=OTHER_DIGEST)
        assert other_model["code"] == "out_of_scope", other_model
        _, other_client = redeem(a.port, grant, stage_tag(random_key()))
        assert other_client["code"] == "out_of_scope", other_client
        short = grant_of(on_a, ttl_s=1)["grant"]
        time.sleep(2.1)  # whole seconds: the expiry is in whole seconds
        _, expired = redeem(a.port, short, stage_tag(key))
        assert expired["code"] == "grant_expired", expired
        peer, ok = redeem(a.port, grant, stage_tag(key))  # its only use is intact
        assert ok["m"] == "redeem_ok", ok
        sha = next(iter(BLOBS))
        pull = {"m": "pull", "model": DIGEST, "sha256": sha, "offset": 0, "length": 10}
        assert peer.request(pull).body == BLOBS[sha][:10]


@pytest.mark.spec("15.2.4")
def test_a_grant_is_redeemed_at_most_uses_times_across_connections() -> None:
    with peered_servers(2, handoff={"grant_uses": 2}) as (a, _):
        key = random_key()
        grant = grant_of(seeded(a.port, key))["grant"]
        results = [redeem(a.port, grant, stage_tag(key))[1]["m"] for _ in range(3)]
        assert results[:2] == ["redeem_ok", "redeem_ok"]
        _, replay = redeem(a.port, grant, stage_tag(key))
        assert replay["code"] == "grant_used_up"
        fresh = grant_of(open_session(a.port, key))  # the same client may ask again
        assert redeem(a.port, fresh["grant"], stage_tag(key))[1]["m"] == "redeem_ok"


@pytest.mark.spec("15.2.4")
def test_a_server_that_cannot_remember_one_more_grant_refuses_it() -> None:
    with peered_servers(2, handoff={"max_grants_remembered": 1, "grant_uses": 2}) as (a, _):
        key = random_key()
        on_a = seeded(a.port, key)
        first, second = grant_of(on_a)["grant"], grant_of(on_a)["grant"]
        assert redeem(a.port, first, stage_tag(key))[1]["m"] == "redeem_ok"
        assert redeem(a.port, second, stage_tag(key))[1]["code"] == "busy"
        assert redeem(a.port, first, stage_tag(key))[1]["m"] == "redeem_ok"  # still counted
        assert redeem(a.port, first, stage_tag(key))[1]["code"] == "grant_used_up"


# ----- §15.3 pull -----------------------------------------------------------------------------


@pytest.mark.spec("15.3.2")
def test_pulls_are_answered_only_within_a_redeemed_scope(two: list[Any]) -> None:
    a, _ = two
    key = random_key()
    d1, d2, _d3 = BLOBS
    # The granting session holds d1 of the model, and all of another model of its own;
    # another tenant holds every blob of the model (so A stores d2, for someone else).
    on_a = seeded(a.port, key, BODY, {d1: BLOBS[d1]})
    on_a.request({"m": "manifest", "model": OTHER_DIGEST}, OTHER_BODY)
    upload(on_a, OTHER_DIGEST, OTHER_BLOBS, {})
    stranger = seeded(a.port, random_key())
    grant = grant_of(on_a)["grant"]
    other_sha = next(iter(OTHER_BLOBS))

    def pull(peer: RefPeer, digest: str, offset: int, length: int, model: str = DIGEST) -> Any:
        head = {"m": "pull", "model": model, "sha256": digest, "offset": offset, "length": length}
        return peer.request(head)

    before = open_session(a.port, random_key())
    assert pull(before, d1, 0, 8).head["code"] == "out_of_scope"  # nothing redeemed
    peer, ok = redeem(a.port, grant, stage_tag(key))
    assert ok["m"] == "redeem_ok" and ok["blobs"] == {d1: len(BLOBS[d1])}
    assert pull(peer, d2, 0, 8).head["code"] == "out_of_scope"  # stored, but another's
    assert pull(peer, other_sha, 0, 8).head["code"] == "out_of_scope"  # its other model
    assert pull(peer, other_sha, 0, 8, OTHER_DIGEST).head["code"] == "out_of_scope"
    assert pull(peer, d1, len(BLOBS[d1]) - 4, 8).head["code"] == "bad_request"  # past the end
    got = pull(peer, d1, 100, 1000)
    assert got.head["m"] == "pull_ok" and got.body == BLOBS[d1][100:1100]
    assert sorted(stranger.request({"m": "have", "model": DIGEST}).head["blobs_held"]) == sorted(
        BLOBS
    )


@pytest.mark.spec("15.3.3")
def test_an_answer_for_another_range_ends_the_source() -> None:
    src = ReferenceSource(DIGEST, BLOBS, SourceBehaviour(wrong_offset=True))
    with src.serving() as port, server_peering(port) as b:
        key = random_key()
        on_b, _, reply = move(b.port, key, BODY, BLOBS, source=name(port), grant="g1.x.y")
        assert reply is not None
        assert reply["fetched"] == [] and set(reply["failed"].values()) == {"unreachable"}
        assert reply["blobs_held"] == [] and reply["partial"] == {}
        assert reply["source_error"] == "unreachable"
        # move() uploaded everything itself: the session works
        assert load_and_query(on_b).shape == (8,)


# ----- §15.4 fetch ----------------------------------------------------------------------------


@pytest.mark.spec("15.4.1")
def test_fetch_needs_the_manifest_and_blobs_it_names(two: list[Any]) -> None:
    a, b = two
    key = random_key()
    grant = grant_of(seeded(a.port, key))["grant"]
    on_b = open_session(b.port, key)
    assert fetch(on_b, name(a.port), grant, list(BLOBS))["code"] == "unknown_model"
    assert on_b.request({"m": "manifest", "model": DIGEST}, BODY).head["blobs_held"] == []
    bad = [*BLOBS, next(iter(OTHER_BLOBS))]
    assert fetch(on_b, name(a.port), grant, bad)["code"] == "unknown_blob"
    assert on_b.request({"m": "have", "model": DIGEST}).head["blobs_held"] == []
    ok = fetch(on_b, name(a.port), grant, list(BLOBS))
    assert sorted(ok["fetched"]) == sorted(BLOBS) and sorted(ok["blobs_held"]) == sorted(BLOBS)
    assert load_and_query(on_b).shape == (8,)


@pytest.mark.spec("15.4.2")
def test_pulled_bytes_that_do_not_match_are_discarded_as_a_clients() -> None:
    src = ReferenceSource(DIGEST, BLOBS, SourceBehaviour(corrupt=True))
    with src.serving() as port, server_peering(port) as b:
        on_b, _, reply = move(b.port, random_key(), BODY, BLOBS, source=name(port), grant="g")
        assert reply is not None and reply["fetched"] == []
        assert set(reply["failed"].values()) == {"digest_mismatch"}, reply
        assert reply["blobs_held"] == [] and reply["partial"] == {}  # nothing kept
        assert load_and_query(on_b).shape == (8,)  # the client's own upload went in


@pytest.mark.spec("15.4.2")
def test_pulled_blobs_count_against_the_sessions_byte_budget() -> None:
    d1, d2, d3 = BLOBS  # 66 KB, 263 KB, 8 KB
    budget = len(BLOBS[d1]) + len(BLOBS[d3]) + 100
    src = ReferenceSource(DIGEST, BLOBS)
    with src.serving() as port, server_peering(port, max_bytes_per_session=budget) as b:
        on_b, _, _ = move(b.port, random_key(), BODY, {}, source=None, grant=None)
        reply = fetch(on_b, name(port), "g", [d1, d2, d3])
        assert sorted(reply["fetched"]) == sorted([d1, d3]), reply
        assert reply["failed"] == {d2: "limit_exceeded"}
        assert sorted(reply["blobs_held"]) == sorted([d1, d3]) and reply["partial"] == {}


@pytest.mark.spec("15.4.2", "10.3.4")
def test_a_fetched_blob_of_a_public_marked_model_is_published_as_an_upload_is() -> None:
    d1, d2, _ = BLOBS
    src = ReferenceSource(DIGEST, BLOBS)
    with src.serving() as port, server_peering(port) as b:
        on_b = open_session(b.port, random_key())
        head = {"m": "manifest", "model": DIGEST, "public": ["d1"]}  # d1's blob only
        assert on_b.request(head, BODY).head["blobs_public"] == []
        reply = fetch(on_b, name(port), "g", [d1, d2])
        assert sorted(reply["fetched"]) == sorted([d1, d2]), reply
        assert reply["blobs_public"] == [d1]
        other = open_session(b.port, random_key())  # any later session naming it
        seen = other.request({"m": "manifest", "model": DIGEST}, BODY).head
        assert seen["blobs_public"] == [d1] and seen["blobs_held"] == []


@pytest.mark.spec("15.5.4", "10.3.4")
def test_a_manifest_refused_for_its_marking_claims_no_staged_blob(two: list[Any]) -> None:
    a, b = two
    key = random_key()
    on_a = seeded(a.port, key)
    push = {"m": "push", "model": DIGEST, "target": name(b.port), "blobs": list(BLOBS),
            "deadline_ms": 10_000, "prepare": [["d1", "d2"]]}  # fmt: skip
    built = b.handoff.stats["built_ahead"]
    assert sorted(on_a.request(push).head["pushed"]) == sorted(BLOBS)
    wait_for(lambda: b.handoff.stats["built_ahead"] >= built + 2)  # d1 and d2 built ahead
    on_b = open_session(b.port, key)
    head = {"m": "manifest", "model": DIGEST, "public": ["no_such_layer"]}
    assert on_b.request(head, BODY).head["code"] == "bad_request"
    assert on_b.request({"m": "have", "model": DIGEST}).head["code"] == "unknown_model"
    claimed = on_b.request({"m": "manifest", "model": DIGEST}, BODY).head  # the staged blobs
    assert sorted(claimed["blobs_held"]) == sorted(BLOBS), claimed  # are still there,
    assert {"d1", "d2"} <= set(claimed["layers_ready"]), claimed  # with the layers built
    assert claimed["blobs_public"] == []  # and not published without a marking
    assert load_and_query(on_b).shape == (8,)


@pytest.mark.spec("15.4.3")
def test_a_source_that_vanishes_leaves_what_verified() -> None:
    order = list(BLOBS)  # d1 (66 KB), d2 (263 KB), d3 (8 KB)
    first = len(BLOBS[order[0]])
    src = ReferenceSource(DIGEST, BLOBS, SourceBehaviour(vanish_after=first + 3 * 16384))
    handoff = {"pull_piece": 16384, "pulls_in_flight": 1}
    with src.serving() as port, server_peering(port, handoff=handoff) as b:
        on_b, _, _ = move(b.port, random_key(), BODY, {}, source=None, grant=None)
        reply = fetch(on_b, name(port), "g", order)
        assert reply["fetched"] == [order[0]], reply
        assert reply["source_error"] == "unreachable"
        assert reply["blobs_held"] == [order[0]]
        assert reply["partial"] == {order[1]: 3 * 16384}  # what arrived of the blob in flight
        have = on_b.request({"m": "have", "model": DIGEST}).head
        assert have["partial"] == reply["partial"]
        # the client uploads the rest as always, resuming the partial blob
        upload(on_b, DIGEST, {d: BLOBS[d] for d in order[1:]}, have["partial"])
        assert load_and_query(on_b).shape == (8,)


@pytest.mark.spec("15.4.4")
def test_the_reference_client_moves_with_its_key_and_manifest_first(two: list[Any]) -> None:
    a, b = two
    key = random_key()
    on_a = seeded(a.port, key)
    expected = load_and_query(on_a)
    grant = grant_of(on_a)["grant"]
    on_b, manifest, fetched = move(b.port, key, BODY, BLOBS, source=name(a.port), grant=grant)
    assert manifest["blobs_held"] == [] and fetched is not None
    assert sorted(fetched["fetched"]) == sorted(BLOBS)
    np.testing.assert_allclose(load_and_query(on_b), expected, rtol=1e-5, atol=1e-6)
    # A different key at B is a different client: the grant does not serve it
    _other, _, refused = move(b.port, random_key(), BODY, BLOBS, source=name(a.port), grant=grant)
    assert refused is not None and refused["source_error"] == "out_of_scope"


# ----- §15.5 pre-migration ----------------------------------------------------------------------


@pytest.mark.spec("15.5.1")
def test_push_needs_the_manifest_and_sends_only_held_blobs(two: list[Any]) -> None:
    a, b = two
    key = random_key()
    on_a = open_session(a.port, key)
    push = {"m": "push", "model": DIGEST, "target": name(b.port), "blobs": list(BLOBS),
            "deadline_ms": 10_000}  # fmt: skip
    assert on_a.request(push).head["code"] == "unknown_model"
    on_a.request({"m": "manifest", "model": DIGEST}, BODY)
    wrong = {**push, "blobs": [next(iter(OTHER_BLOBS))]}
    assert on_a.request(wrong).head["code"] == "unknown_blob"
    held = next(iter(BLOBS))
    upload(on_a, DIGEST, {held: BLOBS[held]}, {})
    reply = on_a.request(push).head
    assert reply["pushed"] == [held], reply
    assert set(reply["failed"]) == set(BLOBS) - {held}
    assert set(reply["failed"].values()) == {"missing_blobs"}
    _, manifest, _ = move(b.port, key, BODY, {}, source=None, grant=None)
    assert manifest["blobs_held"] == [held]


def stage(peer: RefPeer, tag: str, body: bytes = BODY, model: str = DIGEST) -> Any:
    return peer.request({"m": "stage", "model": model, "tag": tag}, body).head


def stage_blob(
    peer: RefPeer, tag: str, sha: str, data: bytes, *, offset: int = 0, size: int = 0
) -> Any:
    head = {"m": "stage_blob", "model": DIGEST, "tag": tag, "sha256": sha,
            "size": size or len(BLOBS[sha]), "offset": offset}  # fmt: skip
    return peer.request(head, data).head


@pytest.mark.spec("15.5.2")
def test_stage_validates_the_manifest_and_its_digest(two: list[Any]) -> None:
    _, b = two
    peer = open_session(b.port, random_key())
    tag = stage_tag(random_key())
    assert stage(peer, tag, OTHER_BODY)["code"] == "bad_manifest"  # another digest
    broken = BODY.replace(b'"Dense"', b'"Lambda"', 1)
    assert stage(peer, tag, broken, hashlib.sha256(broken).hexdigest())["code"] == "bad_manifest"
    sha = next(iter(BLOBS))
    assert stage_blob(peer, tag, sha, BLOBS[sha])["code"] == "unknown_model"  # nothing staged
    assert stage(peer, tag) == {"m": "stage_ok", "model": DIGEST}


@pytest.mark.spec("15.5.2")
def test_only_peers_may_stage() -> None:
    elsewhere = free_port()  # a peer whose backhaul address is not this loopback one
    peers = {name(elsewhere): f"127.0.0.2:{elsewhere}"}
    with running_server(ServerConfig(handoff=HandoffConfig(peers=peers))) as b:
        peer = open_session(b.port, random_key())  # connects from 127.0.0.1
        key = random_key()
        assert stage(peer, stage_tag(key))["code"] == "unknown_peer"
        sha = next(iter(BLOBS))
        assert stage_blob(peer, stage_tag(key), sha, BLOBS[sha])["code"] == "unknown_peer"
        _, manifest, _ = move(b.port, key, BODY, {}, source=None, grant=None)
        assert manifest["blobs_held"] == []


@pytest.mark.spec("15.5.3")
def test_staged_blobs_are_checked_like_uploads(two: list[Any]) -> None:
    _, b = two
    peer = open_session(b.port, random_key())
    key = random_key()
    tag = stage_tag(key)
    stage(peer, tag)
    sha, blob = next(iter(BLOBS.items()))
    assert stage_blob(peer, tag, sha, blob, size=len(blob) + 1)["code"] == "unknown_blob"
    assert stage_blob(peer, tag, sha, blob[:100], offset=5)["code"] == "offset_conflict"
    corrupt = bytes([blob[0] ^ 1]) + blob[1:]
    assert stage_blob(peer, tag, sha, corrupt)["code"] == "digest_mismatch"
    assert stage_blob(peer, tag, sha, blob)["complete"] is True
    _, manifest, _ = move(b.port, key, BODY, {}, source=None, grant=None)
    assert manifest["blobs_held"] == [sha]


@pytest.mark.spec("15.5.3")
def test_staging_a_blob_the_server_already_stores_still_takes_every_byte(two: list[Any]) -> None:
    _, b = two
    seeded(b.port, random_key())  # another tenant stores every blob of the model on B
    peer = open_session(b.port, random_key())
    tag = stage_tag(random_key())
    stage(peer, tag)
    stage(peer, tag, OTHER_BODY, OTHER_DIGEST)  # a model nobody stores on B
    stored = max(BLOBS, key=lambda d: len(BLOBS[d]))
    unknown = max(OTHER_BLOBS, key=lambda d: len(OTHER_BLOBS[d]))
    answers = []
    for model, sha, data in (
        (DIGEST, stored, BLOBS[stored]),
        (OTHER_DIGEST, unknown, OTHER_BLOBS[unknown]),
    ):
        head = {"m": "stage_blob", "model": model, "tag": tag, "sha256": sha,
                "size": len(data), "offset": 0}  # fmt: skip
        answers.append(peer.request(head, data[:1000]).head)
    # the same answer either way: a partial blob of 1000 bytes, nothing about the other tenant
    assert answers == [
        {"m": "blob_ok", "sha256": stored, "offset": 1000, "complete": False},
        {"m": "blob_ok", "sha256": unknown, "offset": 1000, "complete": False},
    ]


@pytest.mark.spec("15.5.4")
def test_staged_blobs_reach_only_the_session_with_that_key_and_manifest(two: list[Any]) -> None:
    a, b = two
    key = random_key()
    on_a = seeded(a.port, key)
    push = {"m": "push", "model": DIGEST, "target": name(b.port), "blobs": list(BLOBS),
            "deadline_ms": 10_000}  # fmt: skip
    assert sorted(on_a.request(push).head["pushed"]) == sorted(BLOBS)
    _, stranger, _ = move(b.port, random_key(), BODY, {}, source=None, grant=None)
    assert stranger["blobs_held"] == []  # another key, the same manifest: nothing
    nosy = open_session(b.port, key)  # the right key, another manifest: nothing either
    other = nosy.request({"m": "manifest", "model": OTHER_DIGEST}, OTHER_BODY).head
    assert other["blobs_held"] == []
    on_b, manifest, _ = move(b.port, key, BODY, {}, source=None, grant=None)
    assert sorted(manifest["blobs_held"]) == sorted(BLOBS)
    assert load_and_query(on_b).shape == (8,)


@pytest.mark.spec("15.5.5")
def test_layers_built_ahead_are_ready_for_their_client_only(two: list[Any]) -> None:
    a, b = two
    key = random_key()
    on_a = seeded(a.port, key)
    push = {"m": "push", "model": DIGEST, "target": name(b.port), "blobs": list(BLOBS),
            "deadline_ms": 10_000, "prepare": [["d1", "d2"]]}  # fmt: skip
    built = b.handoff.stats["built_ahead"]
    assert sorted(on_a.request(push).head["pushed"]) == sorted(BLOBS)
    _, stranger, _ = move(b.port, random_key(), BODY, {}, source=None, grant=None)
    assert stranger["layers_ready"] == []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and b.handoff.stats["built_ahead"] < built + 2:
        time.sleep(0.1)  # B builds d1 and d2 in the background
    on_b, manifest, _ = move(b.port, key, BODY, {}, source=None, grant=None)
    assert {"d1", "d2"} <= set(manifest["layers_ready"]), manifest
    assert "d3" not in manifest["layers_ready"]  # not asked for: the client loads it
    assert load_and_query(on_b).shape == (8,)


@pytest.mark.spec("15.5.5")
def test_building_ahead_checks_every_weight_and_the_sets() -> None:
    with peered_servers(1) as (b,):
        peer = open_session(b.port, random_key())
        tag = stage_tag(random_key())
        for bad in (["nope"], ["x"], *([["d1"]] * 17,)):
            sets = bad if isinstance(bad[0], list) else [bad]
            head = {"m": "stage", "model": DIGEST, "tag": tag, "prepare": sets}
            assert peer.request(head, BODY).head["code"] == "bad_request", bad
        # A manifest whose first weight's own digest is wrong (the blob's is right): the
        # blob is staged, but the layer is never built (§10.6.1), so never reported ready.
        doc = json.loads(BODY)
        doc["layers"][1]["weights"][0]["sha256"] = "0" * 64
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(body).hexdigest()
        key = random_key()
        head = {"m": "stage", "model": digest, "tag": stage_tag(key), "prepare": [["d1"]]}
        assert peer.request(head, body).head["m"] == "stage_ok"
        d1 = next(iter(BLOBS))
        blob = {"m": "stage_blob", "model": digest, "tag": stage_tag(key), "sha256": d1,
                "size": len(BLOBS[d1]), "offset": 0}  # fmt: skip
        failed = b.handoff.stats["build_ahead_failed"]
        assert peer.request(blob, BLOBS[d1]).head["complete"] is True
        wait_for(lambda: b.handoff.stats["build_ahead_failed"] > failed)  # tried, refused
        _, manifest, _ = move(b.port, key, body, {}, source=None, grant=None)
        assert manifest["blobs_held"] == [d1] and manifest["layers_ready"] == []


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds (the target builds ahead in the background)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the target never got there"
        time.sleep(0.05)


def stage_model(peer: RefPeer, tag: str, body: bytes, blobs: dict[str, bytes], sets: Any) -> None:
    """Stage ``body`` with ``prepare`` ``sets`` and every blob of ``blobs`` under ``tag``."""
    digest = hashlib.sha256(body).hexdigest()
    head = {"m": "stage", "model": digest, "tag": tag, "prepare": sets}
    assert peer.request(head, body).head["m"] == "stage_ok"
    for sha, data in blobs.items():
        head = {"m": "stage_blob", "model": digest, "tag": tag, "sha256": sha,
                "size": len(data), "offset": 0}  # fmt: skip
        assert peer.request(head, data).head["complete"] is True


@pytest.mark.spec("15.5.5")
def test_building_ahead_refuses_sets_naming_local_only_layers(two: list[Any]) -> None:
    _, b = two
    m = dense_model(2)[3]
    m.layer("on_device", "LocalOnly", {"output_shapes": [[8]]}, ["d3:0"])
    body = m.body(["on_device:0"])
    digest = hashlib.sha256(body).hexdigest()
    peer = open_session(b.port, random_key())
    key = random_key()
    for sets in ([["on_device"]], [["d3", "on_device"]]):
        head = {"m": "stage", "model": digest, "tag": stage_tag(key), "prepare": sets}
        assert peer.request(head, body).head["code"] == "bad_request", sets
    _, manifest, _ = move(b.port, key, body, {}, source=None, grant=None)
    assert manifest["blobs_held"] == [] and manifest["layers_ready"] == []  # nothing staged
    stage_model(peer, stage_tag(key), body, dict(m.blobs), [["d1", "d2", "d3"]])  # buildable


@pytest.mark.spec("15.5.5")
def test_a_staged_layer_with_a_non_finite_weight_is_never_built(two: list[Any]) -> None:
    _, b = two
    m = dense_model(3)[3]
    spec = m.layers[1]  # d1: its kernel's first value becomes NaN, every digest made to match
    sha, blob = m.blob_of("d1")
    del m.blobs[sha]
    bad = struct.pack("<f", float("nan")) + blob[4:]
    kernel_len = 64 * 256 * 4
    spec["weights"][0]["sha256"] = hashlib.sha256(bad[:kernel_len]).hexdigest()
    spec["blob"]["sha256"] = hashlib.sha256(bad).hexdigest()
    m.blobs[spec["blob"]["sha256"]] = bad
    body = m.body(["d3:0"])
    key = random_key()
    peer = open_session(b.port, random_key())
    failed = b.handoff.stats["build_ahead_failed"]
    stage_model(peer, stage_tag(key), body, dict(m.blobs), [["d1"], ["d2", "d3"]])
    wait_for(lambda: b.handoff.stats["build_ahead_failed"] > failed)
    time.sleep(0.5)  # a build of the other set, were one under way, would be done by now
    on_b, manifest, _ = move(b.port, key, body, {}, source=None, grant=None)
    assert sorted(manifest["blobs_held"]) == sorted(m.blobs)  # the blobs themselves verified
    assert "d1" not in manifest["layers_ready"], manifest
    digest = hashlib.sha256(body).hexdigest()
    refused = on_b.request({"m": "load", "model": digest, "layers": ["d1"]}).head
    assert refused["code"] == "bad_request", refused  # as a client's load of it (§10.6.1)
    well_behaved, _, _ = move(b.port, random_key(), BODY, BLOBS, source=None, grant=None)
    assert load_and_query(well_behaved).shape == (8,)


@pytest.mark.spec("15.5.5")
def test_layers_built_ahead_are_not_ready_when_the_staged_blobs_exceed_the_budget() -> None:
    budget = sum(map(len, BLOBS.values())) - 1  # every blob but one byte
    with peered_servers(1, max_bytes_per_session=budget) as (b,):
        key = random_key()
        peer = open_session(b.port, random_key())
        stage_model(peer, stage_tag(key), BODY, BLOBS, [["d1"]])
        wait_for(lambda: b.handoff.stats["built_ahead"] >= 1)  # d1 is built on the target
        on_b, manifest, _ = move(b.port, key, BODY, {}, source=None, grant=None)
        assert manifest["layers_ready"] == [], manifest  # not every staged blob fitted
        biggest = max(BLOBS, key=lambda d: len(BLOBS[d]))  # d2's: the one that did not fit
        assert sorted(manifest["blobs_held"]) == sorted(set(BLOBS) - {biggest})
        loaded = on_b.request({"m": "load", "model": DIGEST, "layers": ["d1"]}).head
        assert loaded["m"] == "load_ok" and "d1" in loaded["layers_ready"], loaded


# ----- §14.7 limits ----------------------------------------------------------------------------


@pytest.mark.spec("14.7.1")
def test_a_peer_stages_within_its_limits() -> None:
    small = min(len(b) for b in BLOBS.values())
    with peered_servers(1, handoff={"max_staged_models_per_peer": 1,
                                    "max_staged_bytes_per_peer": small + 10}) as (b,):  # fmt: skip
        peer = open_session(b.port, random_key())
        tag = stage_tag(random_key())
        assert stage(peer, tag)["m"] == "stage_ok"
        assert stage(peer, stage_tag(random_key()))["code"] == "limit_exceeded"
        big = max(BLOBS, key=lambda d: len(BLOBS[d]))
        assert stage_blob(peer, tag, big, BLOBS[big][:100])["code"] == "limit_exceeded"
        little = min(BLOBS, key=lambda d: len(BLOBS[d]))
        assert stage_blob(peer, tag, little, BLOBS[little])["complete"] is True
