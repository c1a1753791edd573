"""Fixtures of the relay tests (registered in tests/conftest.py)."""

from __future__ import annotations
