"""``ionn-server --log-format text|json``: stdlib logging, one line per record.

``json`` writes one JSON object per line: ``time`` (UTC, ISO 8601 with milliseconds),
``level``, ``logger``, ``message`` (the text line), ``pid``, the fields the server's hooks
attach (``record.ionn``: ``event``, ``session``, ``model``, ``qid``, ...; see
:mod:`ionn_net.ops.hooks`), any fields given with :func:`configure` (e.g. ``worker``), and
``exception`` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["FORMATS", "JsonFormatter", "configure"]

FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process or os.getpid(),
            **self._static,
        }
        fields = getattr(record, "ionn", None)
        if isinstance(fields, Mapping):
            doc.update({k: v for k, v in fields.items() if v is not None and k not in doc})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def configure(
    level: str,
    fmt: str,
    *,
    static: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send every record of ``level`` and above to ``stream`` (stderr) in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(static))
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
