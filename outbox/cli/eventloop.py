"""The event loop the commands run on: uvloop where it is installed, else asyncio's own.

uvloop (libuv) makes fewer system calls per loop turn and per socket write than asyncio's
selector loop, and on this project's daemons the system calls are most of the cost. Measured
with 16 emitters flat out on 2 cores (docs/decisions/0009-uvloop.md): the relay's CPU, its own
plus what its PostgreSQL backend and Redis spend for it, fell from 0.37-0.42 to 0.32-0.34 of a
core while it published more batches.

``OUTBOX_EVENT_LOOP`` chooses: ``auto`` (default: uvloop when importable), ``uvloop`` (an error
if it is not installed), ``asyncio``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from outbox.errors import ConfigurationError
from outbox.settings import get_settings

T = TypeVar("T")

log = logging.getLogger("outbox.cli")


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: what :func:`run` will use under the current settings."""
    choice = get_settings().event_loop
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                "OUTBOX_EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop, "
                "or set OUTBOX_EVENT_LOOP=auto or asyncio)"
            ) from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_name` names."""
    try:
        name = loop_name()
    except BaseException:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    log.debug("event=event_loop loop=%s", name)
    if name == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
