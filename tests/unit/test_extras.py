"""The console scripts' optional-dependency check (ionn_net.extras): the table matches
pyproject.toml, and each script's main consults it before it parses its arguments."""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ionn_net import catalog_cli, cli, extras
from ionn_net.bench import cli as bench_cli
from ionn_net.extras import SCRIPT_EXTRAS, Extra, missing_extras

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
MAINS: dict[str, Callable[[list[str]], Any]] = {
    "ionn-server": cli.server_main,
    "ionn-demo": cli.demo_main,
    "ionn-bench": bench_cli.main,
    "ionn-catalog": catalog_cli.main,
}


def _name(requirement: str) -> str:
    for i, c in enumerate(requirement):
        if not (c.isalnum() or c in "-_."):
            return requirement[:i].lower()
    return requirement.lower()


def test_every_console_script_has_a_row_and_an_entry_point() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert set(SCRIPT_EXTRAS) == set(scripts)
    for script, target in scripts.items():
        module, func = target.split(":")
        assert MAINS[script].__module__ == module and MAINS[script].__name__ == func


def test_each_module_listed_comes_from_a_distribution_of_its_extra() -> None:
    declared = PYPROJECT["project"]["optional-dependencies"]
    providers = importlib.metadata.packages_distributions()
    for script, needs in SCRIPT_EXTRAS.items():
        for extra in needs:
            assert extra.name in declared, (script, extra.name)
            allowed = {_name(r) for r in declared[extra.name]}
            for module in extra.modules:
                dists = {d.lower() for d in providers.get(module, [])}
                assert dists & allowed, (script, module, dists, allowed)


def test_nothing_is_missing_in_the_development_environment() -> None:
    for script in SCRIPT_EXTRAS:
        assert missing_extras(script) == []


def test_an_unknown_script_is_a_typed_error() -> None:
    with pytest.raises(KeyError, match="ionn-no-such-script"):
        missing_extras("ionn-no-such-script")


@pytest.mark.parametrize("script", sorted(MAINS))
def test_a_missing_module_stops_the_script_first_with_one_line(
    script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = Extra("bench", ("ionn_net_test_no_such_module",))
    monkeypatch.setitem(extras.SCRIPT_EXTRAS, script, (absent,))
    with pytest.raises(SystemExit) as info:
        MAINS[script](["--help"])  # before parsing: --help would exit 0
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{script}: needs ionn_net_test_no_such_module, not installed; "
        "install it with: pip install 'ionn_net[bench]'\n"
    )


def test_a_redis_store_without_the_redis_extra_stops_the_server_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = Extra("redis", ("ionn_net_test_no_such_module",))
    monkeypatch.setattr(cli, "REDIS_EXTRA", absent)
    with pytest.raises(SystemExit) as info:
        cli.server_main(["--store", "redis://127.0.0.1:6379/0"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "ionn-server: --store redis:// needs ionn_net_test_no_such_module, not installed; "
        "install it with: pip install 'ionn_net[redis]'\n"
    )


def test_the_redis_extra_lists_the_redis_distribution() -> None:
    declared = PYPROJECT["project"]["optional-dependencies"]
    assert extras.REDIS_EXTRA.name in declared
    providers = importlib.metadata.packages_distributions()
    allowed = {_name(r) for r in declared[extras.REDIS_EXTRA.name]}
    for module in extras.REDIS_EXTRA.modules:
        assert {d.lower() for d in providers.get(module, [])} & allowed, module
