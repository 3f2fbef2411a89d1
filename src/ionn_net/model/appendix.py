"""protocol.md Appendix B, generated from the code's own tables.

``python -m ionn_net.model.appendix`` rewrites the text between the two marker comments of
``protocol.md`` (``--check``: exit 1 instead when it differs). The text comes from the tables
the server enforces: the class allowlist, each class's config keys, weights and MAC rule
(:mod:`ionn_net.model.schema`, :mod:`ionn_net.model.configkeys`), the caps of
:class:`~ionn_net.model.limits.SpecLimits`, the weight dtypes and forbidden keys
(:mod:`ionn_net.model.spec`) and the cost-model layer types (:mod:`ionn_net.planner.costmodel`).
A conformance test regenerates it into a string and fails when protocol.md differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from ionn_net.model.configkeys import ACTIVATIONS, REQUIRED, Key, Kind
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits, cap_docs
from ionn_net.model.schema import LOCAL_ONLY, SCHEMAS, WEIGHT_DTYPES, ClassSchema
from ionn_net.model.spec import FORBIDDEN_KEYS
from ionn_net.planner.costmodel import layer_type

__all__ = ["BEGIN", "END", "main", "render", "replace_block"]

BEGIN = "<!-- BEGIN GENERATED APPENDIX B: python -m ionn_net.model.appendix -->"
END = "<!-- END GENERATED APPENDIX B -->"

_MANY_INPUTS = "2 or more"


def _json(value: object) -> str:
    if isinstance(value, tuple):
        value = [list(v) if isinstance(v, tuple) else v for v in value]
    return json.dumps(value)


def _default(key: Key) -> str:
    if key.default is REQUIRED:
        return "required"
    text = f"`{_json(key.default)}`"
    return f"{text} ({key.note})" if key.note and key.nullable else text


def _accepts(key: Key, lim: SpecLimits) -> str:
    text = key.expectation(lim)
    if key.kind is Kind.ACTIVATION:
        text = "an activation name (B.1)"
    bound_names = [b for b in (key.lo, key.hi, key.max_len) if isinstance(b, str)]
    caps = sorted({b.lstrip("-") for b in bound_names if b != "rank"})
    if caps:
        text += " (" + ", ".join(f"`{c}`" for c in caps) + ")"
    if key.note and not key.nullable:
        text += f"; {key.note}"
    return text


def _inputs(schema: ClassSchema, lim: SpecLimits) -> str:
    lo, hi = schema.min_inputs, min(schema.max_inputs, lim.max_inbound)
    if lo == hi:
        return str(lo)
    return _MANY_INPUTS if lo == 2 and hi == lim.max_inbound else f"{lo} to {hi}"


def _weights(schema: ClassSchema) -> str:
    if not schema.weights:
        return "none"
    parts = []
    for w in schema.weights:
        text = f"`{w.role}` {w.shape}"
        if w.dtype != "float32":
            text += f" {w.dtype}"
        if w.present_if:
            text += f" if `{w.present_if}`"
        parts.append(text)
    return ", ".join(parts)


def _macs(schema: ClassSchema) -> str:
    return {"out": "output elements", "0": "0"}.get(schema.macs, schema.macs)


def _class_section(cls: str, schema: ClassSchema, lim: SpecLimits) -> Iterator[str]:
    kind = "pseudo-class, never built" if cls == LOCAL_ONLY else f"cost type `{layer_type(cls)}`"
    yield f"#### {cls}"
    yield ""
    yield (
        f"Inputs: {_inputs(schema, lim)}; {kind}; MACs: {_macs(schema)}; "
        f"weights: {_weights(schema)}."
    )
    yield ""
    if not schema.keys:
        yield "Config: `{}` (no keys)."
        yield ""
        return
    yield "| key | accepts | default |"
    yield "|---|---|---|"
    for key in schema.keys:
        cells = (f"`{key.name}`", _accepts(key, lim), _default(key))
        yield "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    yield ""


def _rules(lim: SpecLimits) -> Iterator[str]:
    yield "### B.1 Rules for every class"
    yield ""
    yield (
        "- A layer's `config` is a JSON object holding only the keys listed for its class "
        "below (any other key is refused, naming it), at most "
        f'{lim.max_config_keys} of them; `dtype` may also be given, as `"float32"` only. '
        "A key left out takes its default; a key marked *required* must be present."
    )
    yield (
        "- Shapes leave out the batch dimension. In the text below, r is the input's rank, "
        "c its last dimension (channels), h and w its height and width, n the size of the "
        "normalized axis, d... and k... the sizes of the given (respectively kept, sorted) "
        "axes, oh and ow the output's height and width, kh/kw and ph/pw the kernel and pool "
        "sizes. An axis follows Keras: 0 is the batch and is refused, -1 the last axis."
    )
    yield (
        "- Weight dtypes: "
        + ", ".join(f"`{d}` ({n} bytes)" for d, n in WEIGHT_DTYPES.items())
        + "; every weight is float32 except the int64 `count` of Normalization. A layer's "
        "blob is its weights in the order listed, each little-endian in C order."
    )
    yield "- Activation names: " + ", ".join(f"`{a}`" for a in sorted(ACTIVATIONS)) + "."
    yield (
        "- Keys refused at any depth of the manifest: "
        + ", ".join(f"`{k}`" for k in sorted(FORBIDDEN_KEYS))
        + "."
    )
    yield (
        "- MACs (multiply-accumulates, at batch 1) are what the cost model's `macs` "
        "feature counts (§10.10); *output elements* is the product of the output shape."
    )
    yield ""


def _caps(lim: SpecLimits) -> Iterator[str]:
    yield "### B.3 Caps"
    yield ""
    yield (
        "The server refuses a manifest (`bad_manifest`) that exceeds any of these "
        "(`SpecLimits` defaults; all at batch 1):"
    )
    yield ""
    yield "| cap | default | bounds |"
    yield "|---|---|---|"
    for name, doc in cap_docs().items():
        value = getattr(lim, name)
        shown = f"{value:g}" if isinstance(value, float) else f"{value}"
        yield f"| `{name}` | {shown} | {doc} |"
    yield ""


def render(lim: SpecLimits = DEFAULT_LIMITS) -> str:
    """Appendix B as markdown (without the marker lines)."""
    lines = [
        "## Appendix B. Layer classes, configs and caps",
        "",
        "Generated by `python -m ionn_net.model.appendix` from the tables the reference "
        "server enforces; `tests/conformance/test_appendix.py` fails when this text and "
        "the code differ. Section 10.3 says how a manifest uses it.",
        "",
        *_rules(lim),
        "### B.2 Classes",
        "",
        f"The allowlist: {len(SCHEMAS) - 1} classes and the pseudo-class `{LOCAL_ONLY}`.",
        "",
    ]
    for cls, schema in SCHEMAS.items():
        lines.extend(_class_section(cls, schema, lim))
    lines.extend(_caps(lim))
    return "\n".join(lines).rstrip("\n") + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between the BEGIN and END markers replaced by ``block``."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"protocol.md: expected the markers {BEGIN!r} ... {END!r}")
    return text[: start + len(BEGIN)] + "\n" + block + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", nargs="?", default="protocol.md", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = parser.parse_args(argv)
    text = args.protocol.read_text(encoding="utf-8")
    new = replace_block(text, render())
    if new == text:
        return 0
    if args.check:
        print(f"{args.protocol}: Appendix B differs from the code", file=sys.stderr)
        return 1
    args.protocol.write_text(new, encoding="utf-8")
    print(f"{args.protocol}: Appendix B regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
