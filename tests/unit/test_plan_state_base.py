"""Which layers the client believes the server runs at base precision (protocol.md §10.12.4,
§10.12.5): a result's ``ran_base`` against the word of a ``load_ok``.

A query runs on the weights it started with, so a query sent before the ``load_ok`` that made a
layer exact may come back saying that layer ran at base; that says nothing about the layer now.
A result of a query sent after that ``load_ok`` that still names the layer contradicts it, and
the client believes the result.
"""

from __future__ import annotations

from typing import Any

import pytest

from ionn_net.client import ClientConfig
from ionn_net.client.plan_state import PlanState
from ionn_net.client.prepare import prepare_model
from ionn_net.planner.workload import QueryPattern


@pytest.fixture(scope="module")
def state_factory() -> Any:
    import keras

    keras.utils.set_random_seed(1)
    x = keras.Input((16,), name="x")
    h = keras.layers.Dense(32, activation="relu", name="d1")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(x, keras.layers.Dense(8, name="d2")(h))
    names = [layer.name for layer in model.layers]
    config = ClientConfig(precision="8bit-first", device_ms=dict.fromkeys(names, 1.0))
    prepared = prepare_model(model, config, chunked=False)
    assert set(prepared.staged) == {"d1", "d2"}

    def new() -> PlanState:
        return PlanState(prepared, pattern=QueryPattern(), assumed_mbit=10.0, slowdown=10.0)

    return new


READY = ("x", "d1", "bn", "d2")


def test_a_result_older_than_the_load_that_made_a_layer_exact_leaves_it_exact(
    state_factory: Any,
) -> None:
    state = state_factory()
    state.adopt_ready(READY, ("d1", "d2"))
    sent = state.base  # a query goes out while both run at base
    state.adopt_ready(READY, ("d2",))  # then d1's refinement is loaded: d1 is exact
    state.observe_base(("d1", "d2"), sent)  # the query ran before the swap
    assert state.base == {"d2"}
    state.adopt_ready(READY, ())
    state.observe_base(("d2",), sent)
    assert state.base == frozenset()


def test_a_result_newer_than_the_load_is_believed_over_it(state_factory: Any) -> None:
    state = state_factory()
    state.adopt_ready(READY, ("d1", "d2"))
    state.adopt_ready(READY, ())
    sent = state.base  # sent after the load_ok that said both are exact
    state.observe_base(("d1",), sent)
    assert state.base == {"d1"}


def test_a_reconnect_that_reports_a_layer_exact_counts_as_a_newer_word(
    state_factory: Any,
) -> None:
    from ionn_net.messages import Holdings

    state = state_factory()
    state.adopt_ready(READY, ("d1", "d2"))
    sent = state.base
    state.adopt_holdings(Holdings(layers_ready=READY, layers_base=("d2",)))
    state.observe_base(("d1", "d2"), sent)
    assert state.base == {"d2"}
