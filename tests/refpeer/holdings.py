"""What a server holds of a model (§10.3.3, §10.4) and the public marking (§10.3.4), for the peer.

Written from protocol.md alone. A `manifest_ok` / `have_ok` carries `blobs_held` (blobs this
session uploaded), `partial` (offsets of its unfinished uploads), `layers_ready`, `refused` and
`blobs_public` (blobs of the manifest the server holds publicly: a catalog, or other sessions'
published uploads), sorted. A client need not upload a public blob; it may `load` the layers of
public blobs at once. The public marking is the `public` member of the `manifest` head: `true`
(every blob), a list of layer names (their blobs) or `false`. Imports nothing from ``ionn_net``.
"""

from __future__ import annotations

import re
from typing import Any

#: §10.3.3: the members every `manifest_ok` and `have_ok` carries.
HOLDINGS_MEMBERS = ("blobs_held", "partial", "layers_ready", "refused", "blobs_public")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def manifest_head(digest: str, public: object = None) -> dict[str, object]:
    """A `manifest` request head; ``public`` (anything but None) is sent as the marking."""
    head: dict[str, object] = {"m": "manifest", "model": digest}
    if public is not None:
        head["public"] = public
    return head


def holdings_problems(head: dict[str, Any]) -> list[str]:
    """Every way a `manifest_ok` / `have_ok` head breaks §10.3.3 (empty: it follows it)."""
    problems = [f"member {m!r} missing" for m in HOLDINGS_MEMBERS if m not in head]
    for member in ("blobs_held", "blobs_public"):
        value = head.get(member)
        if member in head and (
            not isinstance(value, list) or not all(isinstance(d, str) and _DIGEST.match(d)
                                                   for d in value)
        ):  # fmt: skip
            problems.append(f"{member}: a list of SHA-256 digests")
    public = head.get("blobs_public")
    if isinstance(public, list) and public != sorted(public):
        problems.append("blobs_public: sorted")
    return problems


def public_layers(manifest: dict[str, Any], blobs_public: list[str]) -> list[str]:
    """The layers of ``manifest`` (its JSON object) whose blob the server holds publicly,
    in manifest order: what a client may load without uploading."""
    held = set(blobs_public)
    return [
        layer["name"]
        for layer in manifest["layers"]
        if "blob" in layer and layer["blob"]["sha256"] in held
    ]
