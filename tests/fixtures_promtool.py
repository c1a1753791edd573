"""promtool for the tests, and its skip made loud (registered in tests/conftest.py).

Prometheus's own linter checks what the monitor exports (``promtool check metrics``) and the
alert rules (``promtool check rules``). It is found on PATH or in the virtualenv's bin, where
``scripts/test-deps.sh`` (run by ``make test``) copies it out of Debian's ``prometheus``
package. Without it the tests that need it skip, and the terminal summary ends with a banner
that says so and how to get it, as for the browser tests (tests/fixtures_browser.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skip_banner import report_skipped

ROOT = Path(__file__).resolve().parents[1]

#: The skip reason of every test that needs promtool (the banner counts the tests skipped with it).
PROMTOOL_SKIP_REASON = (
    "PROMTOOL TESTS SKIPPED: no promtool (make test copies it from Debian's prometheus package"
    " into .venv/bin when run as root; else: sudo scripts/test-deps.sh)"
)
HOW_TO_GET_IT = (
    "Run `sudo scripts/test-deps.sh` (or `make test` as root): it copies promtool out of Debian's"
    " prometheus package into .venv/bin without installing a Prometheus server"
    " (OUTBOX_TEST_NO_INSTALL=1 turns that off). Any `promtool` on PATH works."
)


def find_promtool() -> str | None:
    """promtool on PATH, else in the running interpreter's or the project's virtualenv."""
    for candidate in (
        shutil.which("promtool"),
        Path(sys.executable).parent / "promtool",
        ROOT / ".venv" / "bin" / "promtool",
    ):
        if candidate is not None and Path(candidate).is_file():
            return str(candidate)
    return None


#: For a test that does much before it runs promtool: skip it at once where there is none.
needs_promtool = pytest.mark.skipif(find_promtool() is None, reason=PROMTOOL_SKIP_REASON)


def _promtool(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run promtool (or skip the test without it); its exit code and its stdout + stderr."""
    promtool = find_promtool()
    if promtool is None:
        pytest.skip(PROMTOOL_SKIP_REASON)
    result = subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout + result.stderr


def promtool_check_metrics(text: str) -> tuple[int, str]:
    """``promtool check metrics`` on an exposition: 0 and no output when it is clean, 3 and one
    line per lint problem (names, units, counters without ``_total``, …), 1 when unparsable."""
    return _promtool("check", "metrics", stdin=text)


def promtool_check_rules(path: Path) -> tuple[int, str]:
    """``promtool check rules`` on a rules file: 0 when every rule parses and is well formed."""
    return _promtool("check", "rules", str(path))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report_skipped(
        terminalreporter,
        PROMTOOL_SKIP_REASON,
        title="PROMTOOL TESTS SKIPPED",
        tool="promtool",
        how_to_get_it=HOW_TO_GET_IT,
    )
