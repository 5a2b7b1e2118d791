"""Reliability suite: a steady load against a reference manager that is killed, drained, made
unready, made to hang, drop or stall; every scenario is tallied and the table printed at the end.
"""

from __future__ import annotations

import pytest

from ._load import REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("reliability figures")
    for line in REPORT.table():
        terminalreporter.write_line(line)
