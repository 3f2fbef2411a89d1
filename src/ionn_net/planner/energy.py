"""Client energy model and the objectives an execution planner can minimise.

This module owns the client's power model (three states: computing, radio active,
idle waiting) and the mapping from an objective name to the weights the planners put
on client compute time, transfer time and waiting time (round trips and server
compute). The defaults are the ODROID-XU4 figures IONN published: compute 7.239 W,
transmit 6.611 W, idle 3.977 W. Receiving is charged at the transmit power (the
radio is active either way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ionn_net.errors import PlannerError

__all__ = ["OBJECTIVES", "CostWeights", "PowerModel", "objective_weights"]

#: Objectives every execution planner accepts.
OBJECTIVES: tuple[str, ...] = ("latency", "energy")


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Client power draw in watts while computing, transferring and waiting."""

    compute_w: float = 7.239
    transmit_w: float = 6.611
    idle_w: float = 3.977

    def __post_init__(self) -> None:
        for name in ("compute_w", "transmit_w", "idle_w"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise PlannerError(f"power {name}: expected a finite number >= 0, got {value!r}")

    def energy_j(self, *, compute_s: float, transfer_s: float, wait_s: float) -> float:
        """Joules for a span made of these three kinds of time."""
        return self.compute_w * compute_s + self.transmit_w * transfer_s + self.idle_w * wait_s


@dataclass(frozen=True, slots=True)
class CostWeights:
    """Cost per second of client compute, transfer and waiting (objective units/s)."""

    compute: float
    transfer: float
    wait: float


def objective_weights(objective: str, power: PowerModel | None = None) -> CostWeights:
    """Weights for ``objective``: seconds for latency, joules for energy."""
    if objective == "latency":
        return CostWeights(1.0, 1.0, 1.0)
    if objective == "energy":
        p = power if power is not None else PowerModel()
        return CostWeights(p.compute_w, p.transmit_w, p.idle_w)
    raise PlannerError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}")
