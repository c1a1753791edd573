"""Fixtures of the projections tests (registered in tests/conftest.py)."""

from __future__ import annotations
