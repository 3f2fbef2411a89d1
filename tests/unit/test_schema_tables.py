"""The per-class tables of ionn_net.model.schema say what the inference code does.

Appendix B of protocol.md is generated from these tables (config keys, weights in blob order,
MAC rule), so each table entry is checked against the behaviour of its class on the hand-worked
SHAPE_CASES: the keys the inference reads are exactly the declared ones, the weights it expects
are the declared ones in the declared order, and "out"/"0" MAC rules match the counts.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from tests.helpers.manifests import SHAPE_CASES, ShapeCase

from ionn_net.errors import SpecError
from ionn_net.model.configkeys import REQUIRED, ConfigReader, Key, Kind
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits, cap_docs
from ionn_net.model.schema import LOCAL_ONLY, SCHEMAS, infer_layer

EXTRA_CASES = [
    ShapeCase("InputLayer", {"shape": [4, 4, 3]}, [], [4, 4, 3], [], 0),
    ShapeCase(LOCAL_ONLY, {"output_shapes": [[5]]}, [[4]], [5], [], 0),
]
CASES = SHAPE_CASES + EXTRA_CASES


def _read(case: ShapeCase) -> tuple[ConfigReader, Any]:
    schema = SCHEMAS[case.cls]
    reader = ConfigReader("layer", case.cls, case.config, schema.keys, DEFAULT_LIMITS)
    result = schema.infer(reader, tuple(tuple(s) for s in case.inputs))
    reader.done()
    return reader, result


def _id(case: ShapeCase) -> str:
    return f"{case.cls}-{sorted(case.config)}"


def test_every_class_has_a_case() -> None:
    assert {c.cls for c in CASES} == set(SCHEMAS)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_inference_reads_exactly_the_declared_keys(case: ShapeCase) -> None:
    reader, _ = _read(case)
    assert reader.used == {k.name for k in SCHEMAS[case.cls].keys}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_weights_are_the_declared_ones_in_the_declared_order(case: ShapeCase) -> None:
    reader, (_, weights, _) = _read(case)
    declared = [
        (w.role, w.dtype)
        for w in SCHEMAS[case.cls].weights
        if not w.present_if or reader.kwargs[w.present_if]
    ]
    assert [(w.role, w.dtype) for w in weights] == declared
    assert [list(w.shape) for w in weights] == case.weights


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_mac_rule_matches_the_count(case: ShapeCase) -> None:
    _, (outputs, _, macs) = _read(case)
    rule = SCHEMAS[case.cls].macs
    if rule == "0":
        assert macs == 0
    elif rule == "out":
        assert macs == sum(math.prod(s) for s in outputs)
    else:
        assert macs == case.macs  # a formula: the hand-worked count of the case


def _all_keys() -> list[tuple[str, Key]]:
    return [(cls, key) for cls, schema in SCHEMAS.items() for key in schema.keys]


@pytest.mark.parametrize(("cls", "key"), _all_keys(), ids=lambda v: getattr(v, "name", v))
def test_key_bounds_name_real_caps(cls: str, key: Key) -> None:
    for bound in (key.lo, key.hi, key.max_len):
        if isinstance(bound, str) and bound != "rank":
            assert bound.lstrip("-") in cap_docs(), (cls, key.name, bound)
    if key.kind in (Kind.CHOICE,):
        assert key.choices and (key.default is REQUIRED or key.default in key.choices)


@pytest.mark.parametrize(
    ("cls", "config", "shapes", "key"),
    [
        ("Dense", {"units": 0}, [[4]], "units"),
        ("Conv2D", {"filters": 2, "kernel_size": [40, 1]}, [[4, 4, 1]], "kernel_size"),
        ("BatchNormalization", {"epsilon": 0.0}, [[4]], "epsilon"),
        ("MaxPooling2D", {"strides": [0, 1]}, [[4, 4, 1]], "strides"),
        ("ZeroPadding2D", {"padding": [[1, 1], [1, 999]]}, [[4, 4, 1]], "padding"),
        ("Reshape", {"target_shape": [1] * 9}, [[4]], "target_shape"),
        ("Rescaling", {"scale": "x"}, [[4]], "scale"),
    ],
)
def test_the_error_says_what_the_appendix_says(
    cls: str, config: dict[str, Any], shapes: list[list[int]], key: str
) -> None:
    """One text serves the error and Appendix B (Key.expectation)."""
    declared = next(k for k in SCHEMAS[cls].keys if k.name == key)
    with pytest.raises(SpecError) as info:
        infer_layer("l", cls, config, [tuple(s) for s in shapes], DEFAULT_LIMITS)
    assert declared.expectation(DEFAULT_LIMITS) in str(info.value)


def test_caps_follow_the_limits_in_force() -> None:
    small = SpecLimits(max_units=8)
    with pytest.raises(SpecError, match=r"\[1, 8\]"):
        infer_layer("l", "Dense", {"units": 9}, [(4,)], small)
    infer_layer("l", "Dense", {"units": 8}, [(4,)], small)


def test_an_undeclared_key_read_is_a_bug_not_a_silent_default() -> None:
    reader = ConfigReader("l", "Dense", {}, SCHEMAS["Dense"].keys, DEFAULT_LIMITS)
    with pytest.raises(SpecError, match="no int key 'filters'"):
        reader.integer("filters")
