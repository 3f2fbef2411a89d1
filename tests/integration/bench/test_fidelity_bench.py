"""``bench/fidelity.py`` machinery on a tiny trained model: a copy built from base stages
is close to the exact model but not equal, 8-bit further than 16-bit, every blob rebuilds
bit-exactly from its stages (trained weights), and the printed line has its format."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[3]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fidelity", ROOT / "bench" / "fidelity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fidelity"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fid() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def trained(fid: ModuleType) -> Any:
    return fid.train_digits(epochs=4, size=16, copies=0)


def test_the_trained_model_learned(trained: Any) -> None:
    assert trained.accuracy > 0.5  # ten classes: trained weights, not random ones


def test_base_stage_copies_are_close_and_coarser_at_8_bits(fid: ModuleType, trained: Any) -> None:
    x_test = trained.data[2]
    result = {}
    for precision in ("16bit-first", "8bit-first"):
        # check_exact: every layer's blob rebuilds bit-exactly from its stages
        approx = fid.staged_copy(trained.model, precision, check_exact=True)
        f = fid.compare(trained.model, approx, x_test)
        assert f.n == len(x_test)
        assert f.top1 >= 0.97, (precision, f)
        assert 0.0 < f.max_rel_err < (0.05 if precision == "16bit-first" else 0.15), f
        result[precision] = f
        line = fid.line("digits-cnn", precision, f, "test")
        pattern = rf"fidelity digits-cnn {precision}: top1 [\d.]+% max_rel_err [\d.e+-]+ "
        assert re.match(pattern, line), line
    assert result["8bit-first"].mean_rel_err > result["16bit-first"].mean_rel_err


def test_the_exact_model_agrees_with_itself(fid: ModuleType, trained: Any) -> None:
    x = trained.data[2][:50]
    f = fid.compare(trained.model, trained.model, x)
    assert (f.top1, f.max_rel_err, f.n) == (1.0, 0.0, 50)


def test_inputs_are_what_the_bench_says(fid: ModuleType) -> None:
    x_train, _, x_test, y_test = fid.digits(size=24)
    assert x_train.shape[1:] == (24, 24, 1) and len(x_train) + len(x_test) == 1797
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    assert set(np.unique(y_test)) <= set(range(10))
    more = fid.augment(x_test[:10], copies=3)
    assert more.shape == (30, 24, 24, 1) and not np.array_equal(more[:10], x_test[:10])
