"""Whether the host's CPUs are saturated, from Linux pressure stall information (PSI).

Every poll of the relay costs its PostgreSQL backend, Redis and itself a few hundred
microseconds of CPU, whatever the batch holds. While the host has idle CPU that is the price of
a 2 ms wake-up. When the host's CPUs are saturated (typically the emitters at their peak, on a
small host that runs the database too), the same polls take CPU from the transactions that
write the events. So the relay yields: while CPU pressure stays high, it waits
``RELAY_POLL_MAX_MS`` after a partly filled batch instead of ``RELAY_POLL_MIN_MS``. Each poll
then carries more events, and the relay makes fewer round trips. A full batch still means a
backlog, so the relay still polls again at once and never falls behind for want of polling
(docs/decisions/0012-relay-yields-under-cpu-pressure.md).

The signal is the kernel's own measure of CPU contention: the share of wall time in which at
least one runnable task waited for a CPU (``some`` in ``/proc/pressure/cpu``, Linux 4.20 and
later). It does not depend on how many cores the host has or how fast they are. A host with
idle cores reads near 0 at any event rate, and there the relay keeps its 2 ms wake-up. The file
covers the whole host, also from inside a container. Where it cannot be read (another OS, PSI
disabled), the relay does not yield.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

PSI_CPU = Path("/proc/pressure/cpu")

#: Seconds between two readings: long enough that one scheduling burst does not flip the
#: decision, short enough that the relay yields within a second of the emitters' peak.
SAMPLE_INTERVAL_S = 0.5

#: The relay stops yielding only once the pressure falls below this share of the threshold, so
#: that its own polling, which adds a little pressure when it resumes, does not flip it back.
RESUME_FRACTION = 0.75


class CpuPressure:
    """The share of wall time, between two readings, that some task waited for a CPU."""

    def __init__(self, path: Path = PSI_CPU, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._last: tuple[float, int] | None = None

    def total_us(self) -> int | None:
        """The ``some`` line's ``total=`` (microseconds stalled since boot), or None."""
        try:
            with self.path.open("rb") as psi:
                line = psi.readline()
        except OSError:
            return None
        # b"some avg10=0.65 avg60=11.80 avg300=27.35 total=221862123\n"
        if not line.startswith(b"some "):
            return None
        for part in line.split():
            if part.startswith(b"total="):
                try:
                    return int(part[6:])
                except ValueError:
                    return None
        return None

    def sample(self) -> float | None:
        """Pressure since the previous call, 0.0 to 1.0; None on the first call or unreadable."""
        total, now = self.total_us(), self._clock()
        if total is None:
            self._last = None
            return None
        last, self._last = self._last, (now, total)
        if last is None or now <= last[0] or total < last[1]:
            return None
        return min(1.0, (total - last[1]) / 1e6 / (now - last[0]))


class Yield:
    """Decides, from readings every :data:`SAMPLE_INTERVAL_S`, whether the relay yields.

    It starts yielding when a reading reaches ``threshold`` (0.0 to 1.0) and stops when one
    falls below ``threshold * RESUME_FRACTION``. A threshold of 0 turns it off.
    """

    def __init__(self, threshold: float, pressure: CpuPressure | None = None) -> None:
        self.threshold = threshold
        self.pressure = pressure or CpuPressure()
        self.yielding = False
        self.last_reading: float | None = None
        self._next_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def available(self) -> bool:
        """Whether pressure can be read here at all (checked once, at start)."""
        return self.pressure.total_us() is not None

    def check(self, now: float) -> bool:
        """Take a reading if one is due. True when :attr:`yielding` changed."""
        if not self.enabled or now < self._next_at:
            return False
        self._next_at = now + SAMPLE_INTERVAL_S
        reading = self.pressure.sample()
        if reading is None:
            return False
        self.last_reading = reading
        if not self.yielding and reading >= self.threshold:
            self.yielding = True
            return True
        if self.yielding and reading < self.threshold * RESUME_FRACTION:
            self.yielding = False
            return True
        return False
