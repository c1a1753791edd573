"""The end-of-run banner of tests skipped for a missing tool (chromium, promtool): a skip in
the short summary is easy to miss, so the plugins that own a skip reason print this."""

from __future__ import annotations

import pytest


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


def report_skipped(
    terminalreporter: pytest.TerminalReporter,
    reason: str,
    *,
    title: str,
    tool: str,
    how_to_get_it: str,
) -> None:
    """When tests were skipped with ``reason``: ``<title>: N without <tool>``, their ids and
    how to get the tool, in red between two rules."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report, pytest.TestReport) and reason in _skip_reason(report)
    ]
    if not skipped:
        return
    terminalreporter.write_sep("!", f"{title}: {len(skipped)} without {tool}", red=True, bold=True)
    for report in skipped:
        terminalreporter.write_line(f"  {report.nodeid}", red=True)
    terminalreporter.write_line(how_to_get_it, red=True, bold=True)
    terminalreporter.write_sep("!", red=True, bold=True)
