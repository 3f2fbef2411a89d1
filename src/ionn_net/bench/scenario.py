"""Benchmark scenarios: what link, which device, which models and strategies, how long.

Owns the scenario schema and its TOML loader (:func:`load_scenario`). A scenario file::

    name = "wifi"
    description = "The IONN paper's default network"

    [link]                 # the same each way
    rate_mbit = 80.0
    rtt_ms = 1.0           # round trip; each direction gets half as one-way delay
    jitter_ms = 0.0        # one-way, uniform +-
    loss = 0.0             # per packet (or per segment on the userspace proxy), each way

    [device]
    mode = "auto"          # "cgroup" (CPU quota), "slowdown" (factor) or "auto"
    quota = 0.1            # cores, for mode "cgroup"
    slowdown = 10.0        # factor, for mode "slowdown" (and "auto" without cgroups)

    [run]
    models = ["mobilenetv2", "resnet50"]
    strategies = ["local", "all_at_once", "neurosurgeon", "ionn", "efficiency", "ours",
                  "ours-16", "ours-8"]
    target_queries = 100   # keep querying until this many completed ...
    tail_s = 3.0           # ... and this long after the upload finished ...
    max_run_s = 120.0      # ... but never longer than this per run

Every key is checked: unknown keys, wrong types and out-of-range values raise
:class:`~ionn_net.errors.ConfigError` naming the file, the key, what was expected
and what arrived.

The shipped scenarios are package data (``ionn_net/bench/scenarios/*.toml``), found
through :mod:`importlib.resources` (:func:`default_scenarios_dir`), so an installed wheel
has them as a source checkout does.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from ionn_net.bench.models import check_model
from ionn_net.errors import ConfigError

__all__ = [
    "STRATEGIES",
    "DeviceConfig",
    "LinkConfig",
    "RunConfig",
    "Scenario",
    "default_scenarios_dir",
    "load_scenario",
    "quick_scenario",
    "scenario_files",
    "scenario_from_doc",
    "strategy_planner",
]

#: Strategies the bench knows, in the order runs and tables list them.
STRATEGIES: tuple[str, ...] = (
    "local",
    "all_at_once",
    "neurosurgeon",
    "ionn",
    "efficiency",
    "ours",
    "ours-16",
    "ours-8",
)
#: Strategies that are a planner with a precision-first upload (protocol.md §10.12).
_PRECISION_FIRST = {"ours-16": ("ours", "16bit-first"), "ours-8": ("ours", "8bit-first")}


def strategy_planner(strategy: str) -> tuple[str, str]:
    """The planner and the upload precision (``ClientConfig.precision``) of a strategy:
    ``ours-16`` and ``ours-8`` are ``ours`` uploading 16-bit and 8-bit bases first."""
    return _PRECISION_FIRST.get(strategy, (strategy, "exact"))


DeviceMode = Literal["auto", "cgroup", "slowdown"]


def _number(where: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and v <= high
    if not ok:
        bound = ">" if low_open else ">="
        raise ConfigError(
            f"{where}: expected a number {bound} {low:g} and <= {high:g}, got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    """A symmetric link: rate, round trip, one-way jitter and loss, each direction."""

    rate_mbit: float
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    queue_ms: float | None = None

    def __post_init__(self) -> None:
        _number("link.rate_mbit", self.rate_mbit, 0.0, 100_000.0, low_open=True)
        _number("link.rtt_ms", self.rtt_ms, 0.0, 10_000.0)
        _number("link.jitter_ms", self.jitter_ms, 0.0, 5_000.0)
        _number("link.loss", self.loss, 0.0, 0.5)
        if self.queue_ms is not None:
            _number("link.queue_ms", self.queue_ms, 0.0, 10_000.0, low_open=True)

    @property
    def rate_bps(self) -> float:
        return self.rate_mbit * 1e6

    @property
    def delay_ms(self) -> float:
        """One-way delay."""
        return self.rtt_ms / 2.0

    def describe(self) -> str:
        parts = [f"{self.rate_mbit:g} Mbit/s", f"{self.rtt_ms:g} ms RTT"]
        if self.jitter_ms:
            parts.append(f"+-{self.jitter_ms:g} ms jitter")
        if self.loss:
            parts.append(f"{self.loss * 100:g}% loss")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    """How the client is made slower than this machine (see :mod:`.device`)."""

    mode: DeviceMode = "auto"
    quota: float = 0.1
    slowdown: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "cgroup", "slowdown"):
            raise ConfigError(
                f"device.mode: expected 'auto', 'cgroup' or 'slowdown', got {self.mode!r}"
            )
        _number("device.quota", self.quota, 0.01, 64.0)
        _number("device.slowdown", self.slowdown, 1.0, 1000.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """Models, strategies and the bounds of every run."""

    models: tuple[str, ...]
    strategies: tuple[str, ...] = STRATEGIES
    target_queries: int = 100
    tail_s: float = 3.0
    max_run_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("run.models: expected at least one model, got none")
        for m in self.models:
            check_model(m)
        if not self.strategies:
            raise ConfigError("run.strategies: expected at least one strategy, got none")
        for s in self.strategies:
            if s not in STRATEGIES:
                raise ConfigError(
                    f"run.strategies: expected names from {', '.join(STRATEGIES)}, got {s!r}"
                )
        for what, items in (("models", self.models), ("strategies", self.strategies)):
            if len(set(items)) != len(items):
                raise ConfigError(f"run.{what}: expected no duplicates, got {list(items)}")
        tq = self.target_queries
        if isinstance(tq, bool) or not isinstance(tq, int) or not 1 <= tq <= 100_000:
            raise ConfigError(f"run.target_queries: expected an integer 1..100000, got {tq!r}")
        _number("run.tail_s", self.tail_s, 0.0, 3600.0)
        _number("run.max_run_s", self.max_run_s, 1.0, 24 * 3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One named scenario (link + device + runs)."""

    name: str
    link: LinkConfig
    run: RunConfig
    device: DeviceConfig = field(default_factory=DeviceConfig)
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        name = self.name
        if (
            not isinstance(name, str)
            or not name
            or len(name) > 40
            or not all(c.isalnum() or c in "-_" for c in name)
        ):
            raise ConfigError(
                f"name: expected 1-40 characters of letters, digits, '-' or '_', got {name!r}"
            )

    def with_(self, **changes: Any) -> Scenario:
        return replace(self, **changes)


_TOP = {"name", "description", "link", "device", "run"}
_SECTIONS: dict[str, tuple[type[Any], set[str]]] = {
    "link": (LinkConfig, {"rate_mbit", "rtt_ms", "jitter_ms", "loss", "queue_ms"}),
    "device": (DeviceConfig, {"mode", "quota", "slowdown"}),
    "run": (RunConfig, {"models", "strategies", "target_queries", "tail_s", "max_run_s"}),
}


def _section(doc: Mapping[str, Any], key: str, where: str) -> Any:
    cls, allowed = _SECTIONS[key]
    raw = doc.get(key, {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: [{key}] expected a table, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: [{key}] expected keys from {sorted(allowed)}, got {unknown}")
    values = dict(raw)
    for list_key in ("models", "strategies"):
        if list_key in values:
            items = values[list_key]
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{where}: run.{list_key} expected a list of strings")
            values[list_key] = tuple(items)
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: [{key}] {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def scenario_from_doc(doc: Mapping[str, Any], where: str = "<scenario>") -> Scenario:
    """Validate a parsed TOML document (see the module docstring for the schema)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise ConfigError(f"{where}: expected top-level keys from {sorted(_TOP)}, got {unknown}")
    for key in ("link", "run"):
        if key not in doc:
            raise ConfigError(f"{where}: expected a [{key}] table, missing")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description expected a string, got {description!r}")
    try:
        return Scenario(
            name=doc.get("name", ""),
            description=description,
            link=_section(doc, "link", where),
            device=_section(doc, "device", where),
            run=_section(doc, "run", where),
            source=where,
        )
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None


def default_scenarios_dir() -> Traversable:
    """The scenarios shipped in the package (``ionn_net/bench/scenarios``)."""
    return files("ionn_net.bench").joinpath("scenarios")


def scenario_files(directory: Traversable) -> list[Traversable]:
    """The ``*.toml`` files of ``directory`` by name (none if it is not a directory)."""
    if not directory.is_dir():
        return []
    found = [f for f in directory.iterdir() if f.name.endswith(".toml") and f.is_file()]
    return sorted(found, key=lambda f: f.name)


def load_scenario(path: str | Path | Traversable) -> Scenario:
    """Read and validate one scenario file (a path, or a packaged resource)."""
    p = Path(path) if isinstance(path, str) else path
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"scenario {str(p)!r}: cannot read ({exc.strerror})") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"scenario {str(p)!r}: not valid TOML ({exc})") from None
    return scenario_from_doc(doc, str(p))


def quick_scenario() -> Scenario:
    """The ``--quick`` scenario: a small CNN on a 20 Mbit/s, 10 ms link, 5 s runs."""
    return Scenario(
        name="quick",
        description="CI smoke run: a small CNN, 20 Mbit/s, 10 ms RTT, short runs",
        link=LinkConfig(rate_mbit=20.0, rtt_ms=10.0),
        # 30x: the small CNN then takes ~65 ms on the "device" against ~20 ms offloaded,
        # so every strategy offloads even on a loaded CI host (at 10x the two were within
        # a millisecond and a busy host tipped every plan to local).
        device=DeviceConfig(mode="slowdown", slowdown=30.0),
        run=RunConfig(
            models=("cnn_small",),
            strategies=STRATEGIES,
            target_queries=30,
            tail_s=1.0,
            max_run_s=5.0,
        ),
        source="built-in",
    )
