"""Project-wide pytest configuration: kept minimal and generic.

Makes the repository root importable so that tests can import the shared packages
``tests.helpers`` and ``tests.refpeer`` however pytest is invoked (``pytest``,
``python -m pytest``, from any directory). Shared fixtures belong in ``tests/helpers/`` modules,
not here. The ``spec(section, level)`` marker is registered in pyproject.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
