"""Event schema versions and upcasters: old events in the log stay readable after a change.

An event's schema version travels in its headers (``schema_version``, a decimal string); an
event without one is version 1, as are all events written before versions existed. emit()
stamps the current version of the event type, the highest one registered here or with
``register_schema(..., version=n)``, when it is above 1, so nothing changes for unversioned
types and no migration is needed (headers are stored and relayed already).

On read, a message is upcast step by step (``1 → 2 → 3``) before a handler sees it: in
``apply_batch`` (live projections, partitioned projections, rebuilds and the outbox re-fetches
all go through it) and in ``RedisStreamsClient.consume_messages``. A missing step, an upcaster
that raises, or an event newer than this process knows is an :class:`UpcastError`: the event
fails like a handler failure and ends in the dead letters, with the step named; it is never
passed through in the old shape.

Upcast data is not validated against the current model on read: emit() validated it when it
was written, and an upcaster is the user's code (test it against the model, see
docs/upcasting.md). The registry is process-global, like the schemas'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from outbox.errors import EventSchemaError, UpcastError
from outbox.validation import SchemaRegistry, check_event_type, check_service, check_version
from outbox.validation import schemas as default_schemas

if TYPE_CHECKING:
    # Not at run time: emit() imports this module and must not import Redis's side.
    from outbox.streams.codec import StreamMessage

#: The header holding an event's schema version; absent means version 1.
SCHEMA_VERSION_HEADER = "schema_version"

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_Key = tuple[str | None, str]


def version_of(message: StreamMessage) -> int:
    """The schema version a message carries (1 when it carries none)."""
    text = message.headers.get(SCHEMA_VERSION_HEADER)
    if text is None:
        return 1
    try:
        return check_version(int(text))
    except (TypeError, ValueError):
        raise UpcastError(
            f"{message.service}/{message.event_type} event {message.event_id} has an invalid "
            f"{SCHEMA_VERSION_HEADER} header {text!r}"
        ) from None


class UpcasterRegistry:
    """Upcasters per event type (of one service, or of every service) and source version."""

    def __init__(self, schemas: SchemaRegistry) -> None:
        self._schemas = schemas
        self._steps: dict[_Key, dict[int, tuple[int, Upcaster]]] = {}

    @property
    def active(self) -> bool:
        """Whether any version or upcaster is registered: if not, reads skip upcasting."""
        return bool(self._steps or self._schemas._models)

    def register(
        self,
        event_type: str,
        from_version: int,
        upcaster: Upcaster,
        *,
        to_version: int | None = None,
        service: str | None = None,
    ) -> None:
        """Read ``event_type`` data of ``from_version`` as ``to_version`` (default the next
        version) through ``upcaster``, a function of the data dict returning the new dict."""
        check_event_type(event_type)
        if service is not None:
            check_service(service)
        check_version(from_version)
        target = from_version + 1 if to_version is None else check_version(to_version)
        if target <= from_version:
            raise UpcastError(
                f"an upcaster of {event_type} goes to a later version: {from_version} → {target}"
            )
        self._steps.setdefault((service, event_type), {})[from_version] = (target, upcaster)

    def upcaster(
        self,
        event_type: str,
        from_version: int,
        *,
        to_version: int | None = None,
        service: str | None = None,
    ) -> Callable[[Upcaster], Upcaster]:
        """Decorator form of :meth:`register`: ``@outbox.upcaster("user_created", 1)``."""

        def decorate(upcaster: Upcaster) -> Upcaster:
            self.register(
                event_type, from_version, upcaster, to_version=to_version, service=service
            )
            return upcaster

        return decorate

    def unregister(
        self, event_type: str, from_version: int | None = None, *, service: str | None = None
    ) -> None:
        """Forget the upcaster from ``from_version``, or all of the event type's."""
        steps = self._steps.get((service, event_type))
        if steps is None:
            return
        if from_version is None:
            steps.clear()
        else:
            steps.pop(from_version, None)
        if not steps:
            del self._steps[(service, event_type)]

    def clear(self) -> None:
        """Forget every upcaster (tests)."""
        self._steps.clear()

    def _step(self, service: str, event_type: str, version: int) -> tuple[int, Upcaster] | None:
        own = self._steps.get((service, event_type))
        if own and version in own:
            return own[version]
        shared = self._steps.get((None, event_type))
        return shared.get(version) if shared else None

    def current_version(self, service: str, event_type: str) -> int | None:
        """The version emit() writes and readers upcast to: the highest registered schema
        version or upcaster target; None when nothing is registered for the event type."""
        versions = set(self._schemas.versions(service, event_type))
        for key in ((service, event_type), (None, event_type)):
            for target, _ in self._steps.get(key, {}).values():
                versions.add(target)
        return max(versions) if versions else None

    def stamp(self, service: str, event_type: str, headers: dict[str, str]) -> None:
        """Write the current version into ``headers`` (emit() and publish_message); refuse a
        caller-given ``schema_version`` that is not the current one."""
        version = self.current_version(service, event_type)
        if version is None or version == 1:
            return
        given = headers.get(SCHEMA_VERSION_HEADER)
        if given is not None and given != str(version):
            raise EventSchemaError(
                f"{service}/{event_type} is at schema version {version}; the event's "
                f"{SCHEMA_VERSION_HEADER} header says {given!r}"
            )
        headers[SCHEMA_VERSION_HEADER] = str(version)

    def upcast(self, message: StreamMessage) -> None:
        """Bring ``message`` (in place) to the current version of its event type, or raise
        :class:`UpcastError`. A message already current, or of an event type nothing is
        registered for, is left as it is; upcasting a message twice is a no-op."""
        version = version_of(message)
        current = self.current_version(message.service, message.event_type)
        if current is None or version == current:
            return
        name = f"{message.service}/{message.event_type}"
        if version > current:
            raise UpcastError(
                f"{name} event {message.event_id} is schema version {version}, newer than "
                f"version {current} this process knows: deploy the readers with the version "
                f"{version} schema and upcasters first, then replay the dead letter"
            )
        data = message.data
        while version < current:
            step = self._step(message.service, message.event_type, version)
            if step is None:
                raise UpcastError(
                    f"no upcaster from version {version} of {name} (event {message.event_id} "
                    f"is version {version_of(message)}, current is {current}): register one "
                    f"with outbox.upcaster({message.event_type!r}, {version})"
                )
            target, upcaster = step
            try:
                upcast = upcaster(dict(data))
            except Exception as error:
                raise UpcastError(
                    f"upcaster {version} → {target} of {name} failed on event "
                    f"{message.event_id}: {error.__class__.__name__}: {error}"
                ) from error
            if not isinstance(upcast, dict):
                raise UpcastError(
                    f"upcaster {version} → {target} of {name} returned "
                    f"{type(upcast).__name__}, not a dict"
                )
            data, version = upcast, target
        message.data = data
        message.headers = {**message.headers, SCHEMA_VERSION_HEADER: str(current)}


upcasters = UpcasterRegistry(default_schemas)
