"""Build this project's wheel and install it into a fresh virtual environment, offline.

How, and why this way:

* The wheel is built by ``pip wheel --no-deps`` from a copy of ``pyproject.toml``,
  ``README.md`` and ``src/`` (so the build writes nothing into the source tree), with
  build isolation as a user's build would: pip fetches the build backend from the
  configured local index. Without isolation the test's own setuptools would have to be
  recent enough for this pyproject.toml, which the ``.venv`` does not promise.
* The environment is ``python -m venv --without-pip``: no system site-packages and no
  ``PYTHONPATH``, so the source tree is not on its path. The wheel goes in with the
  test's pip (``pip --python <venv python> install --no-deps --no-index``), which writes
  the console scripts as a user's install does.
* Its dependencies are not reinstalled (TensorFlow alone takes minutes): a directory of
  symbolic links to the entries of the test interpreter's site-packages, listed in a
  ``.pth`` file of the new environment, provides them. The links leave out every file of
  the installed ``ionn_net`` distribution (an editable install's path hook and metadata)
  and, for an environment "without an extra", every file of that extra's distributions,
  read from their installed metadata. A ``.pth`` line adds a directory to the path but
  processes no ``.pth`` file inside it, so no editable hook can come back that way.

Commands run with the environment's ``bin`` first on ``PATH``, from a directory outside
the source tree, with ``PYTHONPATH``, ``PYTHONHOME`` and ``VIRTUAL_ENV`` removed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST = "ionn_net"


def build_wheel(work: Path, timeout: float = 300.0) -> Path:
    """Build the project's wheel under ``work`` and return its path."""
    src = work / "source"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = work / "dist"
    argv = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(out), "-q"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    wheels = sorted(out.glob(f"{DIST}-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"pip wheel failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return wheels[0]


def extra_distributions(extra: str) -> list[str]:
    """The distributions pyproject.toml lists in ``extra`` (names only)."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = doc["project"]["optional-dependencies"][extra]
    return [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in reqs]


def _top_level_entries(dist: str) -> set[str]:
    """The site-packages entries (first path component) holding files of ``dist``."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:  # not installed here: nothing to leave out
        return set()
    return {f.parts[0] for f in files if f.parts and f.parts[0] != ".."}


def _link_dependencies(target: Path, leave_out: Iterable[str]) -> None:
    excluded: set[str] = set()
    for dist in (DIST, *leave_out):
        excluded |= _top_level_entries(dist)
    target.mkdir(parents=True)
    for directory in site.getsitepackages():
        base = Path(directory)
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            name = entry.name
            skip = name in excluded or name.endswith(".pth") or name == "__pycache__"
            if skip or (target / name).exists():
                continue
            (target / name).symlink_to(entry)


def make_venv(
    path: Path, wheel: Path, *, without: Sequence[str] = (), timeout: float = 120.0
) -> Path:
    """A fresh environment at ``path`` with ``wheel`` installed and the test interpreter's
    dependencies minus the distributions in ``without``; returns its ``bin`` directory."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)],
        check=True,
        timeout=timeout,
        capture_output=True,
    )
    python = path / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    install += ["--no-deps", "--no-index", str(wheel)]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed ({proc.returncode}): {proc.stderr[-3000:]}")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout.strip()
    deps = path / "deps"
    _link_dependencies(deps, without)
    (Path(purelib) / "_test_dependencies.pth").write_text(f"{deps}\n")
    return path / "bin"


def venv_env(bin_dir: Path) -> dict[str, str]:
    """The environment for commands run in the venv (its ``bin`` first on ``PATH``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env["PYTHONNOUSERSITE"] = "1"
    return env
