"""Shared fixtures for integration tests: a calibrated server cost model (once per run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: A directory in which to keep the calibrated cost model across pytest runs (the mutation
#: check runs pytest many times on one machine); unset, every run calibrates afresh.
COST_MODEL_DIR = "IONN_TEST_COST_MODEL_DIR"


@pytest.fixture(scope="session")
def cost_model(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The server cost model calibrated on this machine (about 15 s, once per run)."""
    from ionn_net.calibrate import load_or_calibrate

    kept = os.environ.get(COST_MODEL_DIR)
    root: Path = Path(kept) if kept else tmp_path_factory.mktemp("costmodel")
    return load_or_calibrate(root)
