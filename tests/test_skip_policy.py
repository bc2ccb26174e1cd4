"""The CI skip rule (tests/skip_policy.py, tests/skip_allowlist.py) on a throwaway suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skip_allowlist import ALLOWED, in_ci

HERE = Path(__file__).resolve().parent

SUITE = '''
import pytest

@pytest.fixture
def needs_tool():
    pytest.skip("tool is not installed")

def test_skips_itself():
    pytest.skip("server is not installed")

def test_skips_in_a_fixture(needs_tool):
    pass

@pytest.mark.skipif(True, reason="known limitation")
def test_allowed():
    pass

@pytest.mark.xfail(reason="documented bug")
def test_xfail():
    assert False

def test_passes():
    pass
'''
MODULE_SKIP = 'import pytest\npytest.skip("whole module needs a tool", allow_module_level=True)\n'
CONFTEST = '''
import skip_allowlist
from skip_allowlist import AllowedSkip
from skip_policy import *  # noqa: F403

skip_allowlist.ALLOWED += (AllowedSkip("test_suite.py::test_allowed", "known limitation", "a test of the rule"),)
'''


def run_suite(tmp_path: Path, ci: str | None, *args: str, module_skip: bool = False) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(SUITE)
    if module_skip:
        (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-c", os.devnull, *args, str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("value, ci", [(None, False), ("", False), ("0", False), ("false", False), ("No", False),
                                       ("true", True), ("1", True), ("github-actions", True)])
def test_what_counts_as_ci(monkeypatch: pytest.MonkeyPatch, value: str | None, ci: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_outside_ci_skips_are_skips(tmp_path: Path) -> None:
    r = run_suite(tmp_path, None, module_skip=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 skipped" in r.stdout and "1 passed" in r.stdout and "1 xfailed" in r.stdout, r.stdout


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_under_ci_an_unlisted_skip_fails_the_run_and_is_named(tmp_path: Path, workers: list[str]) -> None:
    r = run_suite(tmp_path, "true", *workers)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "2 skip(s) under CI not on tests/skip_allowlist.py" in out, out
    for line in ("test_suite.py::test_skips_itself: server is not installed",
                 "test_suite.py::test_skips_in_a_fixture: tool is not installed"):
        assert line in out, out
    # The allowed skip stays a skip, and an expected failure is not a skip.
    assert "1 skipped" in out and "1 xfailed" in out and "1 passed" in out, out
    assert "test_allowed" not in out.split("skip(s) under CI")[1], out


def test_under_ci_a_module_level_skip_is_a_collection_error(tmp_path: Path) -> None:
    r = run_suite(tmp_path, "true", module_skip=True)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "test_module_skip.py: whole module needs a tool" in r.stdout, r.stdout


def test_the_allow_list_is_short_and_reasoned() -> None:
    assert len(ALLOWED) <= 8
    for entry in ALLOWED:
        assert entry.test.startswith("tests/test_") and "::" in entry.test, entry
        assert entry.reason and len(entry.why) >= 30, entry
