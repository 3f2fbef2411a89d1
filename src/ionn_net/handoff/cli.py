"""Command-line options of handoff for the server processes (``ionn-server``, the benches).

Owns :func:`add_arguments` (``--peer``, ``--grant-key-file``, ``--peer-secret-file``) and
:func:`config_from` (the :class:`~ionn_net.handoff.config.HandoffConfig` they describe).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ionn_net.errors import ConfigError
from ionn_net.handoff.config import HandoffConfig, parse_address

__all__ = ["add_arguments", "config_from"]


def _peer(text: str) -> tuple[str, str]:
    public, sep, backhaul = text.partition("=")
    try:
        parse_address(public)
        parse_address(backhaul if sep else public)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"expected PUBLIC[=BACKHAUL] host:port: {exc}") from None
    return public, backhaul if sep else public


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The handoff options (protocol.md §15.1, §15.2)."""
    p.add_argument(
        "--peer",
        type=_peer,
        action="append",
        default=[],
        metavar="PUBLIC[=BACKHAUL]",
        help="another edge server this one may fetch from and push to (protocol.md §15): "
        "PUBLIC is host:port as clients reach it, BACKHAUL where this server reaches it "
        "(default: the same); repeatable. Without any, handoff is refused.",
    )
    p.add_argument(
        "--grant-key-file",
        type=Path,
        default=None,
        help="file holding this server's grant key (at least 16 bytes; default: a random key "
        "per process, so grants end with it)",
    )
    p.add_argument(
        "--peer-secret-file",
        type=Path,
        default=None,
        help="file holding the shared secret the peers require (protocol.md §10.2.3), if any",
    )


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc}") from None


def config_from(args: argparse.Namespace) -> HandoffConfig:
    """The handoff policy the parsed options describe."""
    return HandoffConfig(
        peers=dict(args.peer),
        grant_key=_read(args.grant_key_file, "--grant-key-file"),
        peer_secret=_read(args.peer_secret_file, "--peer-secret-file"),
    )
