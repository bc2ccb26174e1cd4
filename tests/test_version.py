"""``scriptgate --version`` and the single definition of the release number."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import server

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag_prints_the_package_version() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "server.cli", "--version"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "scriptgate 0.2.0\n"
    assert server.__version__ == "0.2.0"


def test_pyproject_takes_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "a second definition of the version"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "server.__version__"}
