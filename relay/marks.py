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
    """The marks of every stream of the services a relay holds (stream key → cursor)."""

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self.by_stream: dict[str, Cursor] = {}
        #: service -> its streams with a mark (partitions included), kept as marks arrive.
        self._by_service: dict[str, set[str]] = {}

    def took(self, marks: Mapping[str, Cursor]) -> None:
        """Streams accepted batches (loaded from ``relay_cursors`` or just published)."""
        for stream in marks:
            if stream not in self.by_stream:
                parsed = self._keys.parse_stream(stream)
                if parsed is not None:
                    self._by_service.setdefault(parsed[0], set()).add(stream)
        self.by_stream.update(marks)

    def forget(self, service: str) -> None:
        """The service is no longer held."""
        for stream in self._by_service.pop(service, ()):
            self.by_stream.pop(stream, None)

    def of(self, service: str) -> dict[str, Cursor]:
        """The service's marks (every partition's), to commit with its cursor."""
        return {
            stream: self.by_stream[stream]
            for stream in self._by_service.get(service, ())
            if stream in self.by_stream
        }

    def behind(self, held: Mapping[str, str | None]) -> dict[str, dict[str, str]]:
        """The streams whose watermark (``held``: stream → watermark or None) is behind their
        mark, per service, with the watermark found (``""``: none). Malformed watermarks are
        left to the publish script, which refuses the stream and says why."""
        found: dict[str, dict[str, str]] = {}
        for stream, mark in self.by_stream.items():
            if stream not in held:
                continue
            watermark = held[stream]
            try:
                if watermark is not None and Cursor.parse(watermark) >= mark:
                    continue
            except ValueError:
                continue
            parsed = self._keys.parse_stream(stream)
            if parsed is not None:
                found.setdefault(parsed[0], {})[stream] = watermark or ""
        return found

    def rewind(self, behind: Mapping[str, str]) -> Cursor:
        """Streams that hold less than their marks (stream → watermark found, ``""``: none):
        their marks become what they hold; returns the cursor to re-read the service from, the
        lowest of them (the start for a stream that holds nothing)."""
        found = {stream: Cursor.parse(mark) if mark else START for stream, mark in behind.items()}
        for stream, mark in found.items():
            if mark == START:
                self.by_stream.pop(stream, None)
            else:
                self.took({stream: mark})
        return min(found.values())
