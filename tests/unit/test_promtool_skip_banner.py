"""A run whose promtool tests were skipped for want of promtool ends with a banner saying so
(tests/fixtures_promtool.py), and a run that had promtool has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_promtool import PROMTOOL_SKIP_REASON, find_promtool

ROOT = Path(__file__).resolve().parents[2]
BANNER = "PROMTOOL TESTS SKIPPED: 2 without promtool"

TESTS = """\
import pytest
from tests import fixtures_promtool
from tests.fixtures_promtool import promtool_check_metrics, promtool_check_rules

@pytest.fixture(autouse=True)
def no_promtool(monkeypatch):
    if {absent}:
        monkeypatch.setattr(fixtures_promtool, "find_promtool", lambda: None)

CLEAN = "# HELP up_total Up.\\n# TYPE up_total counter\\nup_total 1\\n"

def test_metrics():
    assert promtool_check_metrics(CLEAN) == (0, "")

def test_rules(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: []\\n")
    assert promtool_check_rules(rules)[0] == 0

@pytest.mark.skip(reason="something else")
def test_other(): pass
"""


@pytest.mark.parametrize("absent", [True, False])
def test_banner_when_promtool_tests_were_skipped(absent: bool, tmp_path: Path) -> None:
    if not absent and find_promtool() is None:
        pytest.skip(PROMTOOL_SKIP_REASON)  # this case runs promtool
    (tmp_path / "test_promtool_use.py").write_text(TESTS.format(absent=absent))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.fixtures_promtool", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if absent:
        assert BANNER in result.stdout
        assert "test_promtool_use.py::test_metrics" in result.stdout
        assert "scripts/test-deps.sh" in result.stdout
    else:
        assert "2 passed" in result.stdout
        assert "PROMTOOL TESTS SKIPPED" not in result.stdout
