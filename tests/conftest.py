"""Project-wide pytest configuration: kept minimal and generic.

Makes the repository root importable so that tests can import the shared packages
``tests.helpers`` and ``tests.refpeer`` however pytest is invoked (``pytest``,
``python -m pytest``, from any directory). Shared fixtures belong in ``tests/helpers/`` modules,
not here. The ``spec(section, level)`` marker is registered in pyproject.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import Phase, settings

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# ``--hypothesis-profile=mutation`` (tests/mutation/run.py): a failing property only needs
# to fail there, not to shrink to its smallest example (minutes per mutation otherwise).
settings.register_profile("mutation", phases=(Phase.explicit, Phase.reuse, Phase.generate))
