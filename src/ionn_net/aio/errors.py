"""Errors the asyncio layer raises to the application.

Owns the two outcomes an awaiting caller can meet besides success: its stream was reset
(by the peer, or locally after a stream error or a cancellation) or the whole connection
ended. Both carry the wire error code (protocol.md §5.1) and say which side ended things.
Local misuse of the API raises :class:`ionn_net.proto.UsageError` instead.
"""

from __future__ import annotations

from ionn_net.errors import IonnError
from ionn_net.proto import ErrorCode

__all__ = ["ConnectionClosedError", "StreamResetError"]


class StreamResetError(IonnError):
    """The stream ended by RESET; ``remote`` is True when the peer sent it."""

    def __init__(self, message: str, *, stream_id: int, error_code: ErrorCode, remote: bool):
        super().__init__(message)
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote


class ConnectionClosedError(IonnError):
    """The connection is over (GOAWAY, a connection error, a timeout, or the socket died).

    ``error_code`` is the wire code (NO_ERROR for a graceful close), ``remote`` says whether
    the peer ended it and ``cause`` holds the underlying exception when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        error_code: ErrorCode,
        remote: bool,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.remote = remote
        self.cause = cause
