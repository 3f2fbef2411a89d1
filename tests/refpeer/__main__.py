"""CLI: connect to an ionn_net server, say ``hello``, ask ``have`` and print the responses.

    python -m tests.refpeer --host 127.0.0.1 --port 7000 [--secret S] [--model DIGEST]

Exit status 0 when the server answered both requests and the connection drained gracefully.
"""

from __future__ import annotations

import argparse
import json
import sys

from .channels import PeerTimeout, SocketChannel
from .peer import PeerClosed, RefPeer
from .session import hello, welcome_cost_model
from .wire import Code, PeerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.refpeer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default=None, help="shared secret of §10.2.3")
    parser.add_argument("--model", default="0" * 64, help="model digest for the have query")
    parser.add_argument("--session", default=None, help="32 hex digits (random by default)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        channel = SocketChannel.connect(args.host, args.port, args.timeout)
    except OSError as exc:
        print(f"refpeer: cannot connect: {exc}", file=sys.stderr)
        return 1
    peer = RefPeer(channel, client=True, timeout=args.timeout)
    try:
        peer.handshake()
        print(json.dumps({"version": peer.version, "server_settings": peer.peer}))
        secret = args.secret.encode() if args.secret is not None else None
        for msg in hello(peer, session=args.session, secret=secret):
            print(json.dumps(msg.head, sort_keys=True))
            if msg.head.get("m") == "welcome" and welcome_cost_model(msg) is None:
                print("refpeer: the cost model breaks §10.10 (ignored)", file=sys.stderr)
        have = peer.request({"m": "have", "model": args.model})
        print(json.dumps(have.head, sort_keys=True))
        peer.ping(b"cli-ping")
        peer.goaway(Code.NO_ERROR, "refpeer done")
    except (PeerError, PeerClosed, PeerTimeout, OSError) as exc:
        print(f"refpeer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        peer.channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
