"""``ionn-bench cache --quick`` end to end: a real ``ionn-server`` with and without a catalog,
client processes over the userspace link, the small CNN. Checks what does not depend on the
machine's load: every case offloads, one line per case, and the bytes each case uploads (none
for a model the catalog holds, only the head for a fine-tuned head, everything without it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ionn_net.bench.cache import CASES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cache_run(
    tmp_path_factory: pytest.TempPathFactory, calibration_dir: Path
) -> tuple[dict[str, Any], str]:
    from ionn_net.calibrate import cache_path

    out = tmp_path_factory.mktemp("cache") / "out"
    argv = [str(Path(sys.executable).parent / "ionn-bench"), "cache", "--quick", "--out", str(out)]
    # the servers take the session's calibration of this machine (it takes minutes afresh)
    argv += ["--cost-model", str(cache_path(calibration_dir))]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=580, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "cache.json").read_text()), proc.stdout


def test_one_line_per_case(cache_run: tuple[dict[str, Any], str]) -> None:
    _, stdout = cache_run
    lines = [x for x in stdout.splitlines() if x.startswith("cache ")]
    assert [x.split()[1] for x in lines] == list(CASES), stdout
    for text in lines:
        assert "first offload" in text and "uploaded MB" in text and "never" not in text, text


def test_what_each_case_uploads(cache_run: tuple[dict[str, Any], str]) -> None:
    doc, _ = cache_run
    by_case = {r["case"]: r for r in doc["results"]}
    for case in ("ionn", "upload"):  # no catalog: the whole model goes up
        r = by_case[case]
        assert r["public_blobs"] == 0 and r["uploaded_bytes"] >= r["model_bytes"] > 0, r
    catalog = by_case["catalog"]  # a second user of the catalog model: nothing
    assert catalog["public_blobs"] > 0 and catalog["uploaded_bytes"] == 0, catalog
    head = by_case["head"]  # the new head only: a few kB of the small CNN's 2.4 MB
    assert head["public_blobs"] == catalog["public_blobs"] - 1, head
    assert 0 < head["uploaded_bytes"] <= 0.05 * head["model_bytes"], head
    for r in doc["results"]:
        assert r["first_offload_s"] is not None and r["offloaded_in_window"] > 0, r
