"""How the ``outbox`` commands log: ``LOG_FORMAT=text`` (the default) or ``json``.

Every log call of the project writes a logfmt-like message with a stable ``event=`` key
(``"event=relay_backoff error=%s delay_s=%.3f attempt=%d"``). The JSON format turns each record
into one object on one line of stderr::

    {"timestamp": "2025-01-31T12:00:00.123Z", "level": "warning", "logger": "outbox.relay",
     "event": "relay_backoff", "error": "RedisUnavailableError('...')", "delay_s": 0.4,
     "attempt": 3}

The fields are read from the format string, not from the rendered text, so a value that holds
spaces or ``=`` (an exception's repr) stays one field; ``%d`` and ``%f`` placeholders become
JSON numbers. A message without ``event=`` (from uvicorn, alembic, asyncio) is kept whole as
``message``. Fields named like a secret and credentials in URLs are redacted.

Only a command configures logging: a library is a guest in a service that has its own.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from typing import Any, Literal, NamedTuple

from outbox.settings import redact_url

#: The text format, as it has always been (tests and operators' tools parse it).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

#: What replaces the value of a field named like a secret.
REDACTED = "***"

#: ``key=`` at the start of the message or after whitespace (which separates it from the value
#: before, so is part of the match).
_KEY = re.compile(r"(?:^|\s+)([a-z_][a-z0-9_.]*)=")
#: A printf-style placeholder, as ``%`` formatting reads them.
_PLACEHOLDER = re.compile(
    r"%(?P<name>\([^)]*\))?[#0+ -]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?"
    r"(?P<type>[diouxXeEfFgGcrsa%])"
)
_INTEGER_TYPES = frozenset("diu")
_FLOAT_TYPES = frozenset("eEfFgG")
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)
#: A URL inside any text; redact_url hides its password, if it has one.
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
#: The keys of the record itself; a parsed field of the same name gets a ``_`` suffix.
_RESERVED = frozenset({"timestamp", "level", "logger", "event", "message", "exception", "stack"})


class _NotATemplate(Exception):
    """The record's format string and arguments cannot be paired placeholder by placeholder."""


def redact_text(text: str) -> str:
    """``text`` with the password of every URL in it hidden."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def _number(kind: str, rendered: str) -> int | float | str:
    """The JSON value of a ``%d``/``%f`` placeholder: a number, or the text when it is none."""
    try:
        value = int(rendered) if kind in _INTEGER_TYPES else float(rendered)
    except ValueError:
        return rendered
    return value if math.isfinite(value) else rendered  # JSON has no NaN or Infinity


def _key_spans(text: str) -> list[tuple[str, int, int]]:
    """Each ``key=`` of ``text`` with where its value starts and ends (where the whitespace
    before the next key starts)."""
    keys = list(_KEY.finditer(text))
    ends = [key.start() for key in keys[1:]] + [len(text)]
    return [(key.group(1), key.end(), end) for key, end in zip(keys, ends, strict=False)]


def _fields_from_template(template: str, args: tuple[object, ...]) -> dict[str, object]:
    """Pair each ``key=`` of the format string with the value of its placeholder(s)."""
    placeholders = list(_PLACEHOLDER.finditer(template))
    if any(p["name"] or p["width"] == "*" or p["precision"] == "*" for p in placeholders):
        raise _NotATemplate
    if sum(p["type"] != "%" for p in placeholders) != len(args):
        raise _NotATemplate
    spans = _key_spans(template)
    fields: dict[str, object] = {}
    # Placeholders in free text before the first key take their arguments, but make no field.
    used = sum(p["type"] != "%" and p.start() < spans[0][1] for p in placeholders)
    for key, start, end in spans:
        value_template = template[start:end]
        inside = [p for p in placeholders if start <= p.start() < end and p["type"] != "%"]
        value_args = args[used : used + len(inside)]
        used += len(inside)
        try:
            rendered = value_template % value_args
        except (TypeError, ValueError, KeyError) as error:
            raise _NotATemplate from error
        value: object = rendered
        only = _PLACEHOLDER.fullmatch(value_template)
        if only and only["type"] in _INTEGER_TYPES | _FLOAT_TYPES:
            value = _number(only["type"], rendered)
        fields[key] = value
    return fields


def _fields_from_text(message: str) -> dict[str, object]:
    """Split a rendered message at each `` key=``: each value runs to the next key."""
    return {key: message[start:end] for key, start, end in _key_spans(message)}


class ParsedMessage(NamedTuple):
    """A log message read as ``event=<name> key=value ...``."""

    event: str | None
    #: The whole message when it has no ``event=``, else any text before its first key.
    message: str | None
    fields: dict[str, object]


def parse_message(record: logging.LogRecord) -> ParsedMessage:
    """The record's ``event`` and fields, or its whole ``message`` when it has no ``event=``."""
    message = record.getMessage()
    template = record.msg
    if isinstance(template, str) and isinstance(record.args, tuple) and record.args:
        if not any(key.group(1) == "event" for key in _KEY.finditer(template)):
            return ParsedMessage(None, message, {})
        try:
            fields = _fields_from_template(template, record.args)
        except _NotATemplate:
            fields = _fields_from_text(message)
    else:
        fields = _fields_from_text(message)
    if "event" not in fields:
        return ParsedMessage(None, message, {})
    event = str(fields.pop("event"))
    prefix = message[: next(_KEY.finditer(message)).start()].strip()
    return ParsedMessage(event, prefix or None, fields)


def _redact(key: str, value: object) -> object:
    if _SECRET_KEY.search(key):
        return REDACTED
    return redact_text(value) if isinstance(value, str) else value


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``timestamp`` (UTC, milliseconds), ``level``
    (lowercase), ``logger``, ``event`` (or ``message``), the message's fields, and
    ``exception`` (the formatted traceback) when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "timestamp": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        parsed = parse_message(record)
        if parsed.event is not None:
            line["event"] = redact_text(parsed.event)
        if parsed.message is not None:
            line["message"] = redact_text(parsed.message)
        for key, value in parsed.fields.items():
            line[f"{key}_" if key in _RESERVED else key] = _redact(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = redact_text(record.exc_text)
        if record.stack_info:
            line["stack"] = redact_text(self.formatStack(record.stack_info))
        # json.dumps escapes newlines: a traceback stays on its record's one line.
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: Literal["text", "json"], *, verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG when ``verbose``) in ``log_format``. Like
    :func:`logging.basicConfig`, it leaves a root logger that already has handlers alone."""
    level = logging.DEBUG if verbose else logging.INFO
    if log_format == "text":
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    # Python's warnings would otherwise be printed as plain text between the JSON lines.
    logging.captureWarnings(True)
