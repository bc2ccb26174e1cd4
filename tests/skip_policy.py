"""Pytest hooks: under CI a skipped test fails unless ``skip_allowlist.ALLOWED`` allows it.

The skip is turned into a failure in the report itself (test, fixture or collection), so
the session's exit status is non-zero and xdist carries it to the controller like any
failure; the terminal summary then lists every unlisted skip with its reason. Loaded by
``tests/conftest.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from skip_allowlist import allowed, in_ci

__all__ = [
    "pytest_collectreport",
    "pytest_make_collect_report",
    "pytest_runtest_logreport",
    "pytest_runtest_makereport",
    "pytest_terminal_summary",
]

MARK = "skipped under CI and not on tests/skip_allowlist.py: "
_unlisted: list[str] = []


def skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _enforce(report: Any) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    reason = skip_reason(report)
    if allowed(report.nodeid, reason) is None:
        report.outcome = "failed"
        report.longrepr = f"{MARK}{report.nodeid}: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    _enforce(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    _enforce(outcome.get_result())


def _note(report: Any) -> None:
    text = str(report.longrepr) if report.failed else ""
    if text.startswith(MARK):
        _unlisted.append(text.removeprefix(MARK))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note(report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _unlisted:
        terminalreporter.write_sep("=", f"{len(_unlisted)} skip(s) under CI not on tests/skip_allowlist.py", red=True)
        for line in _unlisted:
            terminalreporter.write_line(line)
        terminalreporter.write_line("Provide what these tests need in CI (.ci/run), or allow the skip with a reason.")
