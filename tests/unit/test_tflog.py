"""TensorFlow's native start-up lines are kept off a console process's stderr (tflog)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ionn_net.tflog import VERBOSE_ENV, is_native_log_line

NATIVE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796576883.980907    8076 port.cc:153] oneDNN custom operations are on.\n",
    "E0000 00:00:1796576895.897186    8076 cuda_platform.cc:52] failed call to cuInit: x\n",
    "W1206 17:02:03.123456   12 some/dir/file_name.cc:9] a warning\n",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild\n",
]
KEPT = [
    "Traceback (most recent call last):\n",
    "ionn_net.server WARNING request failed\n",
    "I0000 is not a log line without the rest\n",
    "UserWarning: something Python said\n",
]


@pytest.mark.parametrize("line", NATIVE)
def test_native_lines_are_recognised(line: str) -> None:
    assert is_native_log_line(line)


@pytest.mark.parametrize("line", KEPT)
def test_other_lines_are_kept(line: str) -> None:
    assert not is_native_log_line(line)


_CHILD = (
    "import sys\n"
    "from ionn_net.tflog import import_tensorflow\n"
    "print('before', file=sys.stderr, flush=True)\n"
    "import_tensorflow(verbose=len(sys.argv) > 1)\n"
    "print('after', file=sys.stderr, flush=True)\n"
)


def _stderr_of_child(*argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in (VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return proc.stderr


@pytest.mark.slow
def test_console_import_of_tensorflow_is_quiet_and_verbose_shows_it() -> None:
    quiet = _stderr_of_child()
    assert quiet.splitlines() == ["before", "after"], quiet
    loud = _stderr_of_child("--verbose")
    # The same import, unfiltered, prints the native lines: so the quiet run did hide some.
    assert any(is_native_log_line(line) for line in loud.splitlines(keepends=True)), loud
