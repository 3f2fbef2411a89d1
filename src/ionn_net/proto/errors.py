"""Wire error codes (protocol.md §5.1) and one exception class per code.

This module owns :class:`ErrorCode`, the :class:`ProtocolError` hierarchy (one subclass
per non-zero code, registered by ``__init_subclass__`` so that no code is claimed twice)
and :class:`UsageError` for local misuse of the API, which is never sent on the wire.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from ionn_net.errors import IonnError

__all__ = [
    "ApplicationError",
    "AuthFailed",
    "CompressionError",
    "EnhanceYourCalm",
    "ErrorCode",
    "FlowControlError",
    "FrameSizeError",
    "InternalError",
    "MessageTooLarge",
    "ProtocolError",
    "ProtocolTimeout",
    "ProtocolViolation",
    "RefusedStream",
    "SettingsTimeout",
    "StreamCancelled",
    "StreamClosedError",
    "UsageError",
    "VersionMismatch",
    "error_code_from_wire",
    "exception_for",
]


class ErrorCode(enum.IntEnum):
    """Error codes carried by RESET and GOAWAY (§5.1)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    ENHANCE_YOUR_CALM = 0xA
    VERSION_MISMATCH = 0xB
    MESSAGE_TOO_LARGE = 0xC
    TIMEOUT = 0xD
    AUTH_FAILED = 0xE
    APPLICATION_ERROR = 0xF


_BY_VALUE: dict[int, ErrorCode] = {int(c): c for c in ErrorCode}


def error_code_from_wire(value: int) -> ErrorCode:
    """Map a received u32 error code; unknown codes mean INTERNAL_ERROR (§5.1)."""
    return _BY_VALUE.get(value, ErrorCode.INTERNAL_ERROR)


_REGISTRY: dict[ErrorCode, type[ProtocolError]] = {}


class ProtocolError(IonnError):
    """A violation of protocol.md, detected locally or reported by the peer.

    ``stream_id`` is the stream of a stream error (§5.3) or ``None`` for a connection
    error (§5.2). The message says what was expected and what arrived.
    """

    error_code: ClassVar[ErrorCode]

    def __init__(self, message: str, *, stream_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stream_id = stream_id

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("error_code")
        if code is None:
            # A refinement of an existing error (e.g. a more specific PROTOCOL_ERROR)
            # inherits its parent's code and does not claim it in the registry.
            if not hasattr(cls, "error_code"):
                raise TypeError(f"{cls.__name__} must define error_code")
            return
        if code in _REGISTRY:
            raise TypeError(
                f"{cls.__name__}: error code {code.name} already claimed by "
                f"{_REGISTRY[code].__name__}"
            )
        _REGISTRY[code] = cls

    @property
    def is_stream_error(self) -> bool:
        return self.stream_id is not None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, stream_id={self.stream_id})"


def exception_for(code: ErrorCode | int) -> type[ProtocolError]:
    """The exception class of a (non-zero) error code; unknown codes map to INTERNAL_ERROR."""
    mapped = error_code_from_wire(int(code))
    if mapped is ErrorCode.NO_ERROR:
        raise UsageError("NO_ERROR is not an error: there is no exception class for it")
    return _REGISTRY[mapped]


class ProtocolViolation(ProtocolError):
    error_code = ErrorCode.PROTOCOL_ERROR


class InternalError(ProtocolError):
    error_code = ErrorCode.INTERNAL_ERROR


class FlowControlError(ProtocolError):
    error_code = ErrorCode.FLOW_CONTROL_ERROR


class SettingsTimeout(ProtocolError):
    error_code = ErrorCode.SETTINGS_TIMEOUT


class StreamClosedError(ProtocolError):
    error_code = ErrorCode.STREAM_CLOSED


class FrameSizeError(ProtocolError):
    error_code = ErrorCode.FRAME_SIZE_ERROR


class RefusedStream(ProtocolError):
    error_code = ErrorCode.REFUSED_STREAM


class StreamCancelled(ProtocolError):
    error_code = ErrorCode.CANCEL


class CompressionError(ProtocolError):
    error_code = ErrorCode.COMPRESSION_ERROR


class EnhanceYourCalm(ProtocolError):
    error_code = ErrorCode.ENHANCE_YOUR_CALM


class VersionMismatch(ProtocolError):
    error_code = ErrorCode.VERSION_MISMATCH


class MessageTooLarge(ProtocolError):
    error_code = ErrorCode.MESSAGE_TOO_LARGE


class ProtocolTimeout(ProtocolError):
    error_code = ErrorCode.TIMEOUT


class AuthFailed(ProtocolError):
    error_code = ErrorCode.AUTH_FAILED


class ApplicationError(ProtocolError):
    error_code = ErrorCode.APPLICATION_ERROR


class UsageError(IonnError):
    """The local application misused the API (e.g. sent on a closed stream).

    Never sent on the wire (§6.2.4): the offending call raises and nothing is queued.
    """
