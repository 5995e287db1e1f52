"""A skipped test is a failure here: every test must run on any machine (issue 9).

Loaded with ``-p tests.no_skips`` (pyproject addopts). A test that cannot run where the suite
runs says so by failing, never by quietly skipping.
"""

from __future__ import annotations

import pytest

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped:
        terminalreporter.section("skipped tests are failures", sep="=", red=True)
        for nodeid in _skipped:
            terminalreporter.write_line(f"SKIPPED (not allowed): {nodeid}")
