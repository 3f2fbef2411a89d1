"""Independent reference peer of IONN-NET/1, written from protocol.md alone.

Nothing here imports ``ionn_net``: the conformance suite uses this peer as the second
implementation against which the library is checked (two implementations that agree are what
make a specification real). ``python -m tests.refpeer --host H --port P`` runs a
``hello`` + ``have`` exchange against a live server. :mod:`.manifest` builds model manifests from
§10.3.1 and Appendix B and checks a server's cost model against §10.10.
"""

from .channels import Channel, PeerTimeout, PipeChannel, SocketChannel
from .peer import Half, Incoming, Message, PeerClosed, RefPeer, UsageError
from .wire import Code, Codec, Frame, FrameReader, PeerError, S, T

__all__ = [
    "Channel",
    "Code",
    "Codec",
    "Frame",
    "FrameReader",
    "Half",
    "Incoming",
    "Message",
    "PeerClosed",
    "PeerError",
    "PeerTimeout",
    "PipeChannel",
    "RefPeer",
    "S",
    "SocketChannel",
    "T",
    "UsageError",
]
