"""Golden frame vectors of protocol.md (``frames.json``) and their loader.

See ``build_vectors.py`` for the format of each category.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

FILE = Path(__file__).resolve().parent / "frames.json"

Vector = dict[str, Any]


@cache
def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FILE.read_text(encoding="utf-8"))
    return doc


def category(name: str, section: str | None = None) -> list[Vector]:
    """Vectors of one category (``valid``, ``decode_only``, ``invalid``, ``acceptable``)."""
    items: list[Vector] = _doc()[name]
    return [v for v in items if section is None or v.get("section") == section]


def vid(vector: Vector) -> str:
    """Readable pytest id."""
    return str(vector["name"])
