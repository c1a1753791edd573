"""The browser tests' skip, made loud (registered in tests/conftest.py).

The dashboard tests drive Debian's Chromium and skip where it is missing. A skip in the short
summary is easy to miss, so when any were skipped for that reason the terminal summary ends with
a banner that says so and how to get Chromium.
"""

from __future__ import annotations

import pytest

from tests.skip_banner import report_skipped

#: The skip reason of every test that needs Chromium (the banner counts the tests skipped with it).
CHROMIUM_SKIP_REASON = (
    "BROWSER TESTS SKIPPED: no chromium (make test installs Debian's chromium when run as root;"
    " else: apt-get install chromium)"
)
HOW_TO_GET_IT = (
    "Install Debian's chromium (apt-get install chromium), or run `make test` as root, which"
    " installs it (OUTBOX_TEST_NO_INSTALL=1 turns that off). Any `chromium` on PATH works."
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report_skipped(
        terminalreporter,
        CHROMIUM_SKIP_REASON,
        title="BROWSER TESTS SKIPPED",
        tool="chromium",
        how_to_get_it=HOW_TO_GET_IT,
    )
