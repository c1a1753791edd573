"""The browser tests' skip, made loud (registered in tests/conftest.py).

The dashboard tests drive Debian's Chromium and skip where it is missing. A skip in the short
summary is easy to miss, so when any were skipped for that reason the terminal summary ends with
a banner that says so and how to get Chromium.
"""

from __future__ import annotations

import pytest

#: The skip reason of every test that needs Chromium (the banner counts the tests skipped with it).
CHROMIUM_SKIP_REASON = (
    "BROWSER TESTS SKIPPED: no chromium (make test installs Debian's chromium when run as root;"
    " else: apt-get install chromium)"
)
HOW_TO_GET_IT = (
    "Install Debian's chromium (apt-get install chromium), or run `make test` as root, which"
    " installs it (OUTBOX_TEST_NO_INSTALL=1 turns that off). Any `chromium` on PATH works."
)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report, pytest.TestReport) and CHROMIUM_SKIP_REASON in _skip_reason(report)
    ]
    if not skipped:
        return
    terminalreporter.write_sep(
        "!", f"BROWSER TESTS SKIPPED: {len(skipped)} without chromium", red=True, bold=True
    )
    for report in skipped:
        terminalreporter.write_line(f"  {report.nodeid}", red=True)
    terminalreporter.write_line(HOW_TO_GET_IT, red=True, bold=True)
    terminalreporter.write_sep("!", red=True, bold=True)
