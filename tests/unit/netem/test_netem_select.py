"""Backend choice: the order, the reasons, and preferences."""

from __future__ import annotations

import pytest

from ionn_net.errors import ConfigError
from ionn_net.netem.base import BackendUnavailableError
from ionn_net.netem.netns import environment_problem, netem_available
from ionn_net.netem.select import BACKENDS, backend_problems, choose_backend


def test_best_available_backend_and_reasons_for_the_others() -> None:
    problems = backend_problems()
    choice = choose_backend()
    assert problems[choice.kind] is None
    better = BACKENDS[: BACKENDS.index(choice.kind)]
    assert [kind for kind, _ in choice.rejected] == list(better)
    for kind, why in choice.rejected:
        assert why == problems[kind] and why  # each skipped backend says why
    message = choice.message()
    assert f"using {choice.kind}" in message
    for kind, why in choice.rejected:
        assert f"not {kind}: {why}" in message


def test_netem_is_chosen_exactly_when_the_kernel_has_it() -> None:
    choice = choose_backend()
    assert (choice.kind == "netem") == netem_available()
    if environment_problem() is None and not netem_available():
        assert choice.kind == "tbf+pktdelay"
        assert "no netem qdisc" in choice.message()


def test_userspace_proxy_always_runs() -> None:
    choice = choose_backend(prefer="userspace-proxy", strict=True)
    assert (choice.kind, choice.reason, choice.rejected) == ("userspace-proxy", "preferred", ())


def test_unavailable_preference_falls_back_or_raises() -> None:
    if backend_problems()["netem"] is None:
        pytest.skip("netem runs here; nothing to fall back from")
    choice = choose_backend(prefer="netem")
    assert choice.kind != "netem"
    assert "preferred netem cannot run" in choice.reason
    with pytest.raises(BackendUnavailableError, match="netem"):
        choose_backend(prefer="netem", strict=True)


def test_unknown_preference() -> None:
    with pytest.raises(ConfigError, match="prefer"):
        choose_backend(prefer="wifi")
