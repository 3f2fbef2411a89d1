"""Shared fixtures for integration tests: a calibrated server cost model (once per run)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cost_model(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The server cost model calibrated on this machine (about 15 s, once per run)."""
    from ionn_net.calibrate import load_or_calibrate

    root: Path = tmp_path_factory.mktemp("costmodel")
    return load_or_calibrate(root)
