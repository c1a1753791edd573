"""When the relay polls again: adaptive polling, and jittered backoff after failures.

Why no NOTIFY trigger: a transaction that sent NOTIFY takes a database-wide lock at commit,
which serialises every such commit and halves emit throughput at 16 connections
(docs/decisions/0004-relay-wakeup.md). Instead the relay polls again at once while batches come
back full, waits ``RELAY_POLL_MIN_MS`` while they come back partly filled, and while idle backs
off geometrically (``RELAY_POLL_MIN_MS`` doubling up to ``RELAY_POLL_MAX_MS``). An explicit
``pg_notify`` on ``RELAY_NOTIFY_CHANNEL`` cuts an idle wait short.
"""

from __future__ import annotations

import asyncio
import random

from outbox.streams.connection import backoff_delay_s


class AdaptivePoll:
    """The wait before the next poll: none while busy, growing geometrically while idle."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self._idle_s = 0.0
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None

    def after_poll(self, found_events: bool, full: bool = False) -> float:
        """Record a poll's outcome; return how long to wait before the next one.

        A full batch means a backlog: poll again at once. Some events but no full batch means
        a steady trickle: wait the minimum, so each batch gathers a few events instead of the
        relay spinning on one event per round trip (CPU the emitters need). Nothing: back off.
        """
        if full:
            self._idle_s = 0.0
            return 0.0
        if found_events:
            self._idle_s = 0.0
            return self.min_s
        else:
            self._idle_s = min(self.max_s, max(self.min_s, self._idle_s * 2))
        return self._idle_s

    def wake(self) -> None:
        """End the current wait now (a notification, a new lease, shutdown); if none is under
        way, the next wait returns at once."""
        self._idle_s = 0.0
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` unless :meth:`wake` is called first.

        One future and one timer: the relay waits after nearly every poll, and
        ``asyncio.wait_for`` on an Event costs a task and several event-loop turns (each an
        ``epoll_wait`` system call) per wait.
        """
        if seconds <= 0 or self._woken:
            self._woken = False
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
            self._woken = False


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Backoff:
    """Exponential backoff with jitter (a delay drawn from [base/2, base], base doubling).

    Jitter keeps several relays that failed together (Redis restarted) from retrying in lockstep
    (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
    """

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Count a failure and return the delay before the next attempt."""
        self.failures += 1
        return backoff_delay_s(self.failures, self.min_s, self.max_s, self._rng)

    def reset(self) -> None:
        self.failures = 0
