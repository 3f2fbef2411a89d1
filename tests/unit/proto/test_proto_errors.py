"""proto.errors: one exception class per §5.1 code, registry, unknown-code mapping."""

from __future__ import annotations

import pytest

from ionn_net.errors import IonnError
from ionn_net.proto import (
    ErrorCode,
    InternalError,
    ProtocolError,
    ProtocolViolation,
    UsageError,
    error_code_from_wire,
    exception_for,
)


def test_sixteen_codes_with_the_documented_values() -> None:
    assert [int(c) for c in ErrorCode] == list(range(16))
    assert ErrorCode.ENHANCE_YOUR_CALM == 0xA and ErrorCode.APPLICATION_ERROR == 0xF


@pytest.mark.parametrize("code", [c for c in ErrorCode if c is not ErrorCode.NO_ERROR])
def test_every_error_code_has_its_own_exception_class(code: ErrorCode) -> None:
    cls = exception_for(code)
    assert issubclass(cls, ProtocolError) and issubclass(cls, IonnError)
    assert cls.error_code is code
    err = cls("expected X, got Y", stream_id=7)
    assert err.stream_id == 7 and err.is_stream_error and "expected X" in str(err)


def test_classes_are_distinct_and_no_error_has_none() -> None:
    classes = {exception_for(c) for c in ErrorCode if c is not ErrorCode.NO_ERROR}
    assert len(classes) == 15
    with pytest.raises(UsageError):
        exception_for(ErrorCode.NO_ERROR)


def test_unknown_codes_mean_internal_error() -> None:
    assert error_code_from_wire(0x10) is ErrorCode.INTERNAL_ERROR
    assert error_code_from_wire(2**32 - 1) is ErrorCode.INTERNAL_ERROR
    assert error_code_from_wire(7) is ErrorCode.REFUSED_STREAM
    assert exception_for(0x99) is InternalError


def test_registry_rejects_a_second_class_for_a_code() -> None:
    with pytest.raises(TypeError, match="already claimed"):

        class Again(ProtocolError):  # pragma: no cover - never created
            error_code = ErrorCode.PROTOCOL_ERROR

    with pytest.raises(TypeError, match="must define error_code"):

        class Codeless(ProtocolError):  # pragma: no cover - never created
            pass


def test_refinements_inherit_the_code_without_claiming_it() -> None:
    class MalformedThing(ProtocolViolation):
        pass

    assert MalformedThing.error_code is ErrorCode.PROTOCOL_ERROR
    assert exception_for(ErrorCode.PROTOCOL_ERROR) is ProtocolViolation
    assert MalformedThing("x").stream_id is None
