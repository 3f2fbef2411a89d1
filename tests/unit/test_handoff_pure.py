"""ionn_net.handoff's pure parts: grants (§15.2), the staging area (§15.5), the configuration
(§14.7) and the staging tag, without sockets."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from ionn_net.errors import ConfigError
from ionn_net.handoff import HandoffConfig, parse_address, stage_tag
from ionn_net.handoff.grants import GrantIssuer
from ionn_net.handoff.staging import StagingArea
from ionn_net.messages import RequestError
from ionn_net.store import MemoryStore

SESSION, MODEL, NOW = "ab" * 16, "cd" * 32, 1_700_000_000.0


def code(exc: pytest.ExceptionInfo[RequestError]) -> str:
    return exc.value.code


def test_a_grant_verifies_at_its_issuer_only() -> None:
    issuer = GrantIssuer(b"k" * 32)
    token, life = issuer.issue(SESSION, MODEL, 60, now=NOW)
    scope, uses = issuer.verify(token, now=NOW + 59)
    assert (scope.session, scope.model, scope.expires, uses, life) == (
        SESSION,
        MODEL,
        NOW + 60,
        4,
        60,
    )
    with pytest.raises(RequestError) as other:
        GrantIssuer(b"x" * 32).verify(token, now=NOW)  # another server's key
    assert code(other) == "bad_grant"
    with pytest.raises(RequestError) as random_key:
        GrantIssuer().verify(token, now=NOW)
    assert code(random_key) == "bad_grant"


def test_a_grant_life_is_capped_and_ends() -> None:
    issuer = GrantIssuer(b"k" * 32, max_ttl_s=100)
    token, life = issuer.issue(SESSION, MODEL, 10_000, now=NOW)
    assert life == 100
    issuer.verify(token, now=NOW + 99.9)
    with pytest.raises(RequestError) as late:
        issuer.verify(token, now=NOW + 100)
    assert code(late) == "grant_expired"


def test_any_change_to_a_grant_breaks_its_signature() -> None:
    issuer = GrantIssuer(b"k" * 32)
    token, _ = issuer.issue(SESSION, MODEL, 60, now=NOW)
    prefix, payload, mac = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for change in ({"uses": 99}, {"exp": doc["exp"] + 1}, {"model": "ef" * 32}):
        text = json.dumps({**doc, **change}, sort_keys=True, separators=(",", ":")).encode()
        forged = f"{prefix}.{base64.urlsafe_b64encode(text).rstrip(b'=').decode()}.{mac}"
        with pytest.raises(RequestError) as caught:
            issuer.verify(forged, now=NOW)
        assert code(caught) == "bad_grant"
    for bad in ("", "g1", "g1..", f"{prefix}.{payload}.!!", f"{prefix}.{payload}", "g1.e30.e30"):
        with pytest.raises(RequestError) as caught:
            issuer.verify(bad, now=NOW)
        assert code(caught) == "bad_grant"


def test_uses_are_counted_until_the_grant_expires() -> None:
    issuer = GrantIssuer(b"k" * 32, uses=2, max_remembered=4)
    token, _ = issuer.issue(SESSION, MODEL, 60, now=NOW)
    scope, uses = issuer.verify(token, now=NOW)
    assert issuer.consume(scope, uses, now=NOW) == 1
    assert issuer.consume(scope, uses, now=NOW) == 0
    with pytest.raises(RequestError) as replay:
        issuer.consume(scope, uses, now=NOW)
    assert code(replay) == "grant_used_up" and issuer.remembered == 1


def test_a_full_table_refuses_rather_than_forgets() -> None:
    issuer = GrantIssuer(b"k" * 32, uses=1, max_remembered=2)
    scopes = [
        issuer.verify(issuer.issue(SESSION, MODEL, 10, now=NOW)[0], now=NOW) for _ in range(3)
    ]
    for scope, uses in scopes[:2]:
        issuer.consume(scope, uses, now=NOW)
    with pytest.raises(RequestError) as full:
        issuer.consume(*scopes[2], now=NOW)
    assert code(full) == "busy"
    issuer.consume(*scopes[2], now=NOW + 11)  # the others expired: forgotten, room again
    assert issuer.remembered == 1


def test_the_stage_tag_is_the_documented_hash() -> None:
    key = "0123456789abcdef" * 2
    assert stage_tag(key) == hashlib.sha256(b"ionn-stage/1\x00" + key.encode()).hexdigest()
    assert stage_tag(key) != stage_tag(key[::-1])


def test_peer_addresses_are_checked() -> None:
    assert parse_address("10.0.0.1:7400") == ("10.0.0.1", 7400)
    assert parse_address("[::1]:1") == ("::1", 1)
    for bad in ("10.0.0.1", "host:0", "host:65536", ":80", "a b:1", "[::1:1"):
        with pytest.raises(ConfigError):
            parse_address(bad)
    config = HandoffConfig(peers={"a:1": "b:2"})
    assert config.backhaul("a:1") == ("b", 2) and config.backhaul("b:2") is None
    with pytest.raises(ConfigError):
        HandoffConfig(peers={"a:1": "nope"})
    with pytest.raises(ConfigError):
        HandoffConfig(grant_key=b"short")
    with pytest.raises(ConfigError):
        HandoffConfig(max_transfer_s=0)


def staging(**limits: int | float) -> tuple[StagingArea, MemoryStore]:
    store = MemoryStore()
    return StagingArea(store, HandoffConfig(**limits)), store  # type: ignore[arg-type]


def test_staging_is_bounded_per_peer_and_claimed_by_tag_and_model() -> None:
    area, store = staging(max_staged_models_per_peer=1, max_staged_bytes_per_peer=100)
    blob = b"x" * 60
    digest = hashlib.sha256(blob).hexdigest()
    entry = area.stage("10.0.0.1", "t" * 64, MODEL, {digest: 60, "f" * 64: 50}, now=0.0)
    with pytest.raises(RequestError) as models:
        area.stage("10.0.0.1", "u" * 64, MODEL, {digest: 60}, now=0.0)
    assert code(models) == "limit_exceeded"
    area.stage("10.0.0.2", "u" * 64, MODEL, {digest: 60}, now=0.0)  # another peer: its own
    area.check_budget(entry, digest)
    store.put(digest, blob)
    entry.blobs.add(digest)
    with pytest.raises(RequestError) as room:
        area.check_budget(entry, "f" * 64)  # 60 + 50 > 100
    assert code(room) == "limit_exceeded"
    assert area.claim("t" * 64, "ee" * 32, now=1.0) == []  # another manifest
    assert area.claim("v" * 64, MODEL, now=1.0) == []  # another key
    assert [e.blobs for e in area.claim("t" * 64, MODEL, now=1.0)] == [{digest}]
    assert area.claim("t" * 64, MODEL, now=1.0) == []  # once


def test_staged_entries_expire_and_drop_their_partials() -> None:
    area, store = staging(stage_ttl_s=10.0)
    entry = area.stage("p", "t" * 64, MODEL, {"f" * 64: 50}, now=0.0)
    key = entry.partial_key("f" * 64)
    store.append_partial(key, 0, b"abc")
    entry.partials.add("f" * 64)
    area.expire(now=5.0)
    assert area.live(entry) and store.partial_offset(key) == 3
    area.expire(now=10.5)
    assert not area.live(entry) and store.partial_offset(key) == 0
    with pytest.raises(RequestError) as gone:
        area.entry("p", "t" * 64, MODEL, now=11.0)
    assert code(gone) == "unknown_model"


def test_ionn_server_refuses_peers_with_several_workers(tmp_path: Path) -> None:
    """A grant and the session it serves live in one process (§15.2.2, §15.3): with
    ``--workers`` a peer's connection could reach another, so the server does not start."""
    from ionn_net import cli

    argv = ["--store", str(tmp_path), "--workers", "2", "--peer", "b:7878=10.0.0.2:7878"]
    with pytest.raises(SystemExit) as info:
        cli.server_main(argv)
    assert str(info.value.code) == "--peer: handoff needs a single worker (--workers 1)"
