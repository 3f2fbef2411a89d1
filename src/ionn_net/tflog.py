"""TensorFlow's native start-up logs kept off the terminal of the console entry points.

TensorFlow's C++ libraries log through absl *before* absl's logging is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` cannot silence those lines: on a CPU-only machine every process
that imports TensorFlow prints the absl notice ("All log messages before
absl::InitializeLog() is called are written to STDERR"), the oneDNN and CUDA-stub notes
(``I0000 ...``) and, at the first device query, ``E0000 ... failed call to cuInit``.

:func:`import_tensorflow` imports TensorFlow and Keras and queries the devices (which
emits the cuInit line) with file descriptor 2 pointed at a temporary file, then writes
back to stderr every line that is not one of those native log lines: Python warnings and
anything unexpected still show. It works at the descriptor level because the lines are
written by C++ code, which ``sys.stderr`` never sees. Later native logs honour
``TF_CPP_MIN_LOG_LEVEL``, which this module sets for the process and the processes it
starts. The library itself never calls this: only console entry points do, unless the
user asked for ``--verbose``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["NATIVE_LOG_LINE", "VERBOSE_ENV", "import_tensorflow", "is_native_log_line"]

#: Set to "1" by a console process started with ``--verbose``: the processes it starts
#: (the demo's server, the bench's workers) then show the native logs too.
VERBOSE_ENV = "IONN_NET_TF_LOGS"

#: absl's log line prefix: severity letter, MMDD, time, thread id, file:line]
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.\-/]+:\d+\] ")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
#: the second line of TensorFlow's CPU-feature note (the first is a native log line)
_CPU_FEATURE_TAIL = "To enable the following instructions:"


def is_native_log_line(line: str) -> bool:
    """True for a line TensorFlow's C++ start-up writes (absl format or its notices)."""
    return bool(
        NATIVE_LOG_LINE.match(line)
        or line.startswith(_ABSL_NOTICE)
        or line.startswith(_CPU_FEATURE_TAIL)
    )


def import_tensorflow(*, verbose: bool = False) -> None:
    """Import TensorFlow and Keras for a console process, without the native start-up
    lines unless ``verbose``. Sets ``TF_CPP_MIN_LOG_LEVEL`` (INFO and WARNING off) for
    this process and its children unless the user set it or asked for ``verbose``
    (here or, through :data:`VERBOSE_ENV`, in the process that started this one)."""
    if verbose or os.environ.get(VERBOSE_ENV) == "1":
        os.environ[VERBOSE_ENV] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        _import_and_probe()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_filtered():
        _import_and_probe()


def _import_and_probe() -> None:
    import keras  # noqa: F401
    import tensorflow as tf

    # The first device query initialises the platforms (and logs a failed cuInit on a
    # machine without a GPU driver): do it here rather than in the first model build.
    tf.config.list_physical_devices("GPU")


@contextlib.contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    """Point fd 2 at a temporary file for the block; then replay its non-native lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [ln for ln in text.splitlines(keepends=True) if not is_native_log_line(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
