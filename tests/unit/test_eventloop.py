"""``OUTBOX_EVENT_LOOP``: the commands run on uvloop where it is installed, unless told not to."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest

from outbox.cli import eventloop
from outbox.errors import ConfigurationError
from outbox.settings import get_settings


async def _running_loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def _choose(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("OUTBOX_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("OUTBOX_EVENT_LOOP", value)
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("value", "loop"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_run_uses_the_chosen_loop(
    monkeypatch: pytest.MonkeyPatch, value: str | None, loop: str
) -> None:
    _choose(monkeypatch, value)
    assert eventloop.loop_name() == loop
    assert eventloop.run(_running_loop_module()).startswith(loop)


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    _choose(monkeypatch, "auto")
    assert eventloop.loop_name() == "asyncio"
    assert eventloop.run(_running_loop_module()).startswith("asyncio")


def test_asking_for_uvloop_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    _choose(monkeypatch, "uvloop")
    with pytest.raises(ConfigurationError, match="uvloop is not installed"):
        eventloop.loop_name()


def test_an_unknown_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _choose(monkeypatch, "trio")
    with pytest.raises(ValueError, match=r"OUTBOX_EVENT_LOOP\n.*'auto', 'uvloop' or 'asyncio'"):
        get_settings()
