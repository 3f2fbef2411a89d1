"""Optional dependencies of the console scripts, checked before a script does anything.

A wheel installed without an extra has every module of the package but not the third-party
modules that extra brings. Each console script calls :func:`require_extras` with its own
name first thing in its ``main``: a missing module then ends the script with one line on
stderr naming the extra to install, exit status 2, instead of a traceback half-way
through a run. A new console script adds its row to :data:`SCRIPT_EXTRAS` (the suite
checks that every ``[project.scripts]`` entry has one and that each module listed comes
from a distribution of the named extra).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

__all__ = [
    "REDIS_EXTRA",
    "SCRIPT_EXTRAS",
    "Extra",
    "missing_extras",
    "require_extra",
    "require_extras",
]

#: The distribution name users install (``pip install 'ionn_net[bench]'``).
DISTRIBUTION = "ionn_net"


@dataclass(frozen=True, slots=True)
class Extra:
    """An extra of the distribution and the top-level modules a script imports from it."""

    name: str
    modules: tuple[str, ...]

    def install_hint(self) -> str:
        return f"pip install '{DISTRIBUTION}[{self.name}]'"


#: What each console script needs beyond the base dependencies. ``ionn-server``,
#: ``ionn-demo`` and ``ionn-catalog`` run on the base dependencies alone (TensorFlow,
#: Keras, NumPy, zstandard, uvloop, and prometheus_client for the server's metrics port: a
#: base dependency, not an extra, because the health probes an orchestrator needs share
#: that port and the package is small, pure Python and without dependencies of its own);
#: ``ionn-server --store redis://`` also needs :data:`REDIS_EXTRA`, checked when that
#: option is given. ``ionn-bench`` draws its plots with matplotlib; grpcio, the other half
#: of the ``bench`` extra, serves only the transport benchmark under ``bench/`` in a source
#: checkout, so the console script does not ask for it.
SCRIPT_EXTRAS: dict[str, tuple[Extra, ...]] = {
    "ionn-server": (),
    "ionn-demo": (),
    "ionn-bench": (Extra("bench", ("matplotlib",)),),
    "ionn-catalog": (),
}

#: The shared layer store on Redis (``--store redis://...``): needed only when a script is
#: asked for it, so it is checked by :func:`require_extra` then, not by
#: :func:`require_extras` on every start.
REDIS_EXTRA = Extra("redis", ("redis",))


def missing_extras(script: str) -> list[tuple[Extra, list[str]]]:
    """The extras of ``script`` with at least one module that cannot be found, each with
    those modules. Finding a module does not import it (the check stays instant)."""
    try:
        extras = SCRIPT_EXTRAS[script]
    except KeyError:
        known = ", ".join(sorted(SCRIPT_EXTRAS))
        raise KeyError(f"console script {script!r}: expected one of {known}") from None
    out = []
    for extra in extras:
        absent = [m for m in extra.modules if importlib.util.find_spec(m) is None]
        if absent:
            out.append((extra, absent))
    return out


def require_extras(script: str) -> None:
    """Exit with status 2 and one line on stderr if an extra ``script`` needs is missing."""
    missing = missing_extras(script)
    if not missing:
        return
    modules = ", ".join(m for _, absent in missing for m in absent)
    hints = " and ".join(extra.install_hint() for extra, _ in missing)
    sys.stderr.write(f"{script}: needs {modules}, not installed; install it with: {hints}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def require_extra(script: str, extra: Extra, feature: str) -> None:
    """Exit with status 2 and one line on stderr if ``extra``, which ``feature`` of
    ``script`` needs (e.g. ``--store redis://``), is missing."""
    absent = [m for m in extra.modules if importlib.util.find_spec(m) is None]
    if not absent:
        return
    sys.stderr.write(
        f"{script}: {feature} needs {', '.join(absent)}, not installed; "
        f"install it with: {extra.install_hint()}\n"
    )
    sys.stderr.flush()
    raise SystemExit(2)
