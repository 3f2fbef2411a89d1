"""Shared fixtures for integration tests: a calibrated server cost model, this project
installed from its wheel into fresh virtual environments (each once per run), and real
redis-server processes (tests/helpers/redis_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.hang_report import hang_report
from tests.helpers.redis_server import own_redis, redis_server, redis_url
from tests.helpers.wheel_env import build_wheel, extra_distributions, make_venv

#: A directory in which to keep the calibrated cost model across pytest runs (the mutation
#: check runs pytest many times on one machine); unset, every run calibrates afresh.
COST_MODEL_DIR = "IONN_TEST_COST_MODEL_DIR"

__all__ = ["hang_report", "own_redis", "redis_server", "redis_url"]


#: The calibration's smaller models: the server's own calibration (ten models, among them
#: VGG16 and InceptionV3) takes minutes; these give a cost model of this machine in about
#: a tenth of that, which is all the tests need.
QUICK_MODELS = ("MobileNetV2", "MobileNet", "MobileNetV3Large", "EfficientNetB0")


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration cache directory holding this machine's calibration on
    :data:`QUICK_MODELS` (made once per run, or kept in ``IONN_TEST_COST_MODEL_DIR``)."""
    from ionn_net.calibrate import cache_path

    kept = os.environ.get(COST_MODEL_DIR)
    root: Path = Path(kept) if kept else tmp_path_factory.mktemp("costmodel")
    if not cache_path(root).exists():
        # In a process of its own, as a server calibrates at its first start: made inside
        # a test process that had run some 700 tests, the load times it fits came out up
        # to 7x longer (a depthwise layer's 303 ms against 43), and the plans of the tests
        # that use it uploaded less than their premises need.
        subprocess.run(
            [sys.executable, "-c", _CALIBRATE, str(root), *QUICK_MODELS], check=True, timeout=900
        )
    return root


_CALIBRATE = """
import sys
from ionn_net.calibrate import calibrate, store_calibration
store_calibration(sys.argv[1], calibrate(models=tuple(sys.argv[2:])))
"""


@pytest.fixture(scope="session")
def cost_model(calibration_dir: Path) -> object:
    """The server cost model calibrated on this machine (:func:`calibration_dir`)."""
    from ionn_net.calibrate import load_or_calibrate

    return load_or_calibrate(calibration_dir)


@pytest.fixture(scope="session")
def wheel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline from a copy of the sources (about 10 s)."""
    return build_wheel(tmp_path_factory.mktemp("wheel-build"))


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory, wheel_file: Path) -> Path:
    """The ``bin`` directory of a fresh environment holding the wheel with every extra's
    dependencies (see tests/helpers/wheel_env.py for how it is built)."""
    return make_venv(tmp_path_factory.mktemp("wheel-venv") / "venv", wheel_file)


@pytest.fixture(scope="session")
def wheel_venv_without_bench(tmp_path_factory: pytest.TempPathFactory, wheel_file: Path) -> Path:
    """The same without the distributions of the ``bench`` extra (matplotlib, grpcio)."""
    path = tmp_path_factory.mktemp("wheel-venv-nobench") / "venv"
    return make_venv(path, wheel_file, without=extra_distributions("bench"))


@pytest.fixture(scope="session")
def wheel_venv_without_redis(tmp_path_factory: pytest.TempPathFactory, wheel_file: Path) -> Path:
    """The same without the distributions of the ``redis`` extra."""
    path = tmp_path_factory.mktemp("wheel-venv-noredis") / "venv"
    return make_venv(path, wheel_file, without=extra_distributions("redis"))
