"""Marks: the watermark each stream was last seen to take (decision 0011).

Redis can lose writes it acknowledged (a failover to a replica that was behind, a crash with
``appendfsync everysec``, a restart without persistence), and with them events the relay's
cursor has passed. A stream's mark is the cursor of the last event the relay saw it accept; the
marks of a service are committed with its cursor (``relay_cursors.marks``). A watermark behind
its mark, or gone, is a loss: the publish script refuses to add anything past it, the
heartbeat compares the streams that get no batch, and the relay re-reads the service from what
Redis still holds.
"""

from __future__ import annotations

from collections.abc import Mapping

from outbox.relay.cursor import START, Cursor
from outbox.streams.keys import Keys


class Marks:
    """The marks of every lane of the services a relay holds (mark key → cursor).

    A mark key is a stream for the service's own events in it, or, for the events routing rules
    copy into another service's stream, that copy's watermark key (:mod:`relay.routing`): a
    service's marks are those of every lane its events go to, committed with its cursor.
    """

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self.by_stream: dict[str, Cursor] = {}
        #: service -> its mark keys (partitions and copies included), kept as marks arrive.
        self._by_service: dict[str, set[str]] = {}
        self._owner: dict[str, str] = {}

    def took(self, service: str, marks: Mapping[str, Cursor]) -> None:
        """The service's lanes accepted batches (loaded from ``relay_cursors`` or just
        published)."""
        for key in marks:
            if key not in self._owner:
                self._owner[key] = service
                self._by_service.setdefault(service, set()).add(key)
        self.by_stream.update(marks)

    def forget(self, service: str) -> None:
        """The service is no longer held."""
        for key in self._by_service.pop(service, ()):
            self.by_stream.pop(key, None)
            self._owner.pop(key, None)

    def of(self, service: str) -> dict[str, Cursor]:
        """The service's marks (every partition's and copy's), to commit with its cursor."""
        return {
            key: self.by_stream[key]
            for key in self._by_service.get(service, ())
            if key in self.by_stream
        }

    def behind(self, held: Mapping[str, str | None]) -> dict[str, dict[str, str]]:
        """The lanes whose watermark (``held``: mark key → watermark or None) is behind their
        mark, per service, with the watermark found (``""``: none). Malformed watermarks are
        left to the publish script, which refuses the stream and says why."""
        found: dict[str, dict[str, str]] = {}
        for key, mark in self.by_stream.items():
            if key not in held:
                continue
            watermark = held[key]
            try:
                if watermark is not None and Cursor.parse(watermark) >= mark:
                    continue
            except ValueError:
                continue
            service = self._owner.get(key)
            if service is not None:
                found.setdefault(service, {})[key] = watermark or ""
        return found

    def rewind(self, service: str, behind: Mapping[str, str]) -> Cursor:
        """Lanes that hold less than their marks (mark key → watermark found, ``""``: none):
        their marks become what they hold; returns the cursor to re-read the service from, the
        lowest of them (the start for a lane that holds nothing)."""
        found = {key: Cursor.parse(mark) if mark else START for key, mark in behind.items()}
        for key, mark in found.items():
            if mark == START:
                self.by_stream.pop(key, None)
            else:
                self.took(service, {key: mark})
        return min(found.values())
