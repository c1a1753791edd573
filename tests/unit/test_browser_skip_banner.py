"""A run whose browser tests were skipped for want of Chromium ends with a banner saying so
(tests/fixtures_browser.py), and a run without such skips has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BANNER = "BROWSER TESTS SKIPPED: 2 without chromium"

TESTS = """\
import pytest
from tests.fixtures_browser import CHROMIUM_SKIP_REASON

@pytest.mark.skipif({skip}, reason=CHROMIUM_SKIP_REASON)
def test_page(): pass

@pytest.mark.skipif({skip}, reason=CHROMIUM_SKIP_REASON)
def test_button(): pass

@pytest.mark.skip(reason="something else")
def test_other(): pass
"""


@pytest.mark.parametrize("skip", [True, False])
def test_banner_when_browser_tests_were_skipped(skip: bool, tmp_path: Path) -> None:
    (tmp_path / "test_browser.py").write_text(TESTS.format(skip=skip))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.fixtures_browser", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if skip:
        assert BANNER in result.stdout
        assert "test_browser.py::test_page" in result.stdout
        assert "apt-get install chromium" in result.stdout
    else:
        assert "BROWSER TESTS SKIPPED" not in result.stdout
