"""The server's time of each layer of one model as the client plans with it, and where
each comes from (:class:`ServerTimes`, protocol.md §10.10, §10.11)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ionn_net.messages import TimingTable

__all__ = ["ServerTimes"]

#: Server segments whose prediction error is kept (for explanations).
ERRORS_KEPT = 64


class ServerTimes:
    """Per layer: the server's measured time of this model (§10.11), else its prediction
    for this model, else the cost model's (§10.10), else an assumed one (no valid cost
    model). ``ms`` is updated in place, never replaced."""

    def __init__(self, assumed: Mapping[str, float]) -> None:
        self.ms: dict[str, float] = dict(assumed)
        self._source: dict[str, str] = dict.fromkeys(self.ms, "assumed")
        #: the server announced that it will time nothing more of this model
        self.done = False
        #: times changed since the upload was planned (cleared by the planner's owner)
        self.changed = False
        #: relative errors (measured / predicted - 1) of the server's compute time for the
        #: last server segments, before the learned scale: how far the times planned with
        #: were from what the server then took
        self.errors: deque[float] = deque(maxlen=ERRORS_KEPT)

    @property
    def source(self) -> Mapping[str, str]:
        """``measured``, ``predicted``, ``cost_model`` or ``assumed`` per layer."""
        return MappingProxyType(self._source)

    def take_change(self) -> bool:
        """True (once) when the times changed since the last call or the upload's plan."""
        changed, self.changed = self.changed, False
        return changed

    def observe(self, ran: Sequence[str], server_ms: float) -> float | None:
        """What the server took for the layers ``ran`` over what they were predicted to
        take (None when too small to tell), its error kept in :attr:`errors`."""
        predicted = sum(self.ms.get(n, 0.0) for n in ran)
        if predicted <= 0.05 or server_ms <= 0:
            return None
        ratio = server_ms / predicted
        self.errors.append(ratio - 1.0)
        return ratio

    def adopt_model(self, model_ms: Mapping[str, float], source: str) -> None:
        """A cost model's times (``source``: ``cost_model`` or ``assumed``). A reconnect
        brings the cost model again: layers the server timed keep their times."""
        for name, ms in model_ms.items():
            if self._source.get(name) not in ("measured", "predicted"):
                self.ms[name] = ms
                self._source[name] = source

    def adopt_timings(self, table: TimingTable, *, done: bool) -> int:
        """§10.11: the server's measured and predicted times, already checked
        (:meth:`TimingTable.decode`); a layer it measured keeps that time. Returns how
        many layers changed their time."""
        changed = 0
        for source, table_ms in (("measured", table.measured), ("predicted", table.predicted)):
            for name, ms in table_ms.items():
                if name not in self.ms or self._source.get(name) == "measured":
                    continue
                if ms != self.ms[name] or self._source[name] != source:
                    changed += 1
                self.ms[name] = ms
                self._source[name] = source
        self.done = self.done or done
        self.changed = self.changed or changed > 0
        return changed
