"""Every Redis key pattern of the project, named once.

Two layouts of the same names (STREAM_KEY_LAYOUT):

- ``document`` (a single Redis): the original document's ``<prefix>:<service>:events``;
  priorities above NORMAL get their own stream (``…:events:high``, ``…:events:critical``); LOW
  travels on the NORMAL stream (its priority is in the entry).
- ``tagged`` (a Redis Cluster, required there): ``<prefix>:{<service>}:events[:high|:critical]``,
  so every key of a service hashes to the slot of ``<service>`` and one XREADGROUP or one script
  can use them together (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags).

A key that must live in the same slot as its stream (the publish watermark) is the stream's name
plus a suffix when the name already carries a hash tag, and otherwise wraps the whole name in
one (``{<stream>}:watermark``, which hashes exactly like ``<stream>``): never nested braces, whose
first ``{…}`` would be the tag and put the key in another slot than its stream.

A tenant's keys (docs/tenancy.md) are the same names under the prefix
``<prefix>:tenant:<tenant>`` (:meth:`Keys.for_tenant`): its streams, its dead letters, its
consumers' heartbeats, so one Redis ACL key pattern (``~<prefix>:tenant:<tenant>:*``) covers
everything a tenant's consumers touch and nothing of another tenant's. Keys of the deployment
never parse as a tenant's, nor a tenant's as the deployment's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from outbox.envelope import MessagePriority
from outbox.partitioning import Partition

#: Consumer group of a projection: one per projection name and stream.
DEAD_LETTER_SERVICE = "dead_letter"
METRICS_SERVICE = "metrics"


#: Between a stream's watermark key and the origin service of a copy watermark.
_COPY_INFIX = ":from:"
#: Between the deployment's prefix and a tenant id.
TENANT_INFIX = ":tenant:"


def _suffix(priority: MessagePriority) -> str:
    return f":{priority.label}" if priority > MessagePriority.NORMAL else ""


class _Settings(Protocol):
    """The part of :class:`outbox.settings.ClientSettings` that names the keys."""

    @property
    def stream_prefix(self) -> str: ...

    @property
    def tagged_keys(self) -> bool: ...


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (``STREAM_PREFIX``, default ``opsconductor``), in the
    document's layout or, with ``tagged``, hash-tagged by service."""

    prefix: str
    tagged: bool = False

    @classmethod
    def for_settings(cls, settings: _Settings) -> Keys:
        return cls(settings.stream_prefix, settings.tagged_keys)

    def for_tenant(self, tenant: str) -> Keys:
        """The keys of tenant ``tenant`` (a checked tenant id): every name of this class under
        ``<prefix>:tenant:<tenant>``."""
        return Keys(f"{self.prefix}{TENANT_INFIX}{tenant}", self.tagged)

    @property
    def tenant_pattern(self) -> str:
        """The glob matching every key of tenants under this prefix (``SCAN MATCH``)."""
        return f"{self.prefix}{TENANT_INFIX}*"

    def parse_tenant_stream(self, stream: str) -> tuple[str, str, MessagePriority] | None:
        """``(tenant, service, priority)`` of a tenant's event stream, or None for any other
        key (the deployment's own streams included)."""
        head = f"{self.prefix}{TENANT_INFIX}"
        if not stream.startswith(head):
            return None
        tenant, sep, _ = stream[len(head) :].partition(":")
        if not sep or not tenant or "{" in tenant:
            return None
        parsed = self.for_tenant(tenant)._parse(stream)
        if parsed is None or "." in parsed[0]:
            return None
        return tenant, parsed[0], parsed[1]

    def _service(self, service: str) -> str:
        return f"{{{service}}}" if self.tagged else service

    def stream(
        self,
        service: str,
        priority: MessagePriority = MessagePriority.NORMAL,
        partition: Partition | None = None,
    ) -> str:
        """``<prefix>:<service>:events`` (+ ``:high`` / ``:critical``); the service in braces
        in the tagged layout; a partition of epoch ``e`` ≥ 1 is ``<service>.<e>.<p>`` in their
        place (decision 0014)."""
        name = service if partition is None or partition.epoch == 0 else partition.name(service)
        return f"{self.prefix}:{self._service(name)}:events{_suffix(priority)}"

    def streams_of(self, service: str, partition: Partition | None = None) -> list[str]:
        """The service's (or one partition's) streams, highest priority first."""
        return [
            self.stream(service, MessagePriority.CRITICAL, partition),
            self.stream(service, MessagePriority.HIGH, partition),
            self.stream(service, MessagePriority.NORMAL, partition),
        ]

    def parse_partition(self, stream: str) -> tuple[str, Partition, MessagePriority] | None:
        """``(service, partition, priority)`` of one of our event streams (epoch 0 for a
        service's unpartitioned streams), or None for any other key."""
        parsed = self._parse(stream)
        if parsed is None:
            return None
        name, priority = parsed
        service, dot, rest = name.partition(".")
        if not dot:
            return service, Partition(0, 0), priority
        epoch, dot, index = rest.partition(".")
        if not (dot and epoch.isdigit() and index.isdigit()) or int(epoch) < 1:
            return None
        return service, Partition(int(epoch), int(index)), priority

    def watermark(self, stream: str) -> str:
        """Cursor ``<txid>:<position>`` of the last event published to ``stream`` (see
        :data:`PUBLISH_LUA`), in the stream's cluster slot."""
        if "{" in stream and "}" in stream.split("{", 1)[1]:
            return f"{stream}:watermark"
        return f"{{{stream}}}:watermark"

    def watermark_source(self, watermark: str) -> str:
        """The key of the source id a watermark's txids belong to (:data:`PUBLISH_LUA`), beside
        it in its slot: ``<watermark>:source``."""
        return f"{watermark}:source"

    def copy_watermark(self, stream: str, origin: str) -> str:
        """Watermark of the events of service ``origin`` that routing rules copy or route into
        ``stream``, another service's stream (docs/routing.md): one per origin, because the
        origins' cursors interleave arbitrarily. In the stream's cluster slot, like
        :meth:`watermark`."""
        return f"{self.watermark(stream)}{_COPY_INFIX}{origin}"

    def parse_copy_watermark(self, key: str) -> tuple[str, str] | None:
        """``(stream, origin)`` of a :meth:`copy_watermark` key, or None for any other key."""
        head, sep, origin = key.rpartition(_COPY_INFIX)
        base = head.removesuffix(":watermark")
        if not sep or not origin or ":" in origin or base == head:
            return None
        stream = base[1:-1] if base.startswith("{") and base.endswith("}") else base
        if self.parse_stream(stream) is None or self.watermark(stream) != head:
            return None
        return stream, origin

    @property
    def dead_letter(self) -> str:
        return self.stream(DEAD_LETTER_SERVICE)

    @property
    def metrics(self) -> str:
        return self.stream(METRICS_SERVICE)

    @property
    def consumers(self) -> str:
        """Hash of the heartbeats of ``RedisStreamsClient`` consumers (streams/heartbeat.py)."""
        return f"{self.prefix}:consumers"

    def parse_stream(self, stream: str) -> tuple[str, MessagePriority] | None:
        """``(service, priority)`` of one of our event streams (of any partition), or None for
        any other key."""
        parsed = self.parse_partition(stream)
        return None if parsed is None else (parsed[0], parsed[2])

    def _parse(self, stream: str) -> tuple[str, MessagePriority] | None:
        head = f"{self.prefix}:"
        if not stream.startswith(head):
            return None
        parts = stream[len(head) :].split(":")
        if self.tagged:
            if not (parts[0].startswith("{") and parts[0].endswith("}")) or len(parts[0]) < 3:
                return None
            parts[0] = parts[0][1:-1]
        elif "{" in parts[0] or "}" in parts[0]:
            return None
        if len(parts) == 2 and parts[1] == "events":
            return parts[0], MessagePriority.NORMAL
        if len(parts) == 3 and parts[1] == "events":
            label = parts[2].upper()
            if label in ("HIGH", "CRITICAL"):
                return parts[0], MessagePriority[label]
        return None


# --- Lua scripts (run with EVALSHA; the ``#!lua`` shebang opts into Redis 7.0 script flags:
# with no flags a script counts as a writer, so an over-maxmemory server refuses it whole
# before it runs instead of failing half-way, https://redis.io/docs/latest/develop/interact/programmability/eval-intro/#eval-flags)

#: Idempotent batch publish. KEYS: the stream, its watermark (:meth:`Keys.watermark`), and the
#: watermark's source (:meth:`Keys.watermark_source`).
#: ARGV[1]: the watermark the caller last saw this stream take (``"txid:position"``), or ``""``.
#: ARGV[2]: the caller's source id (``outbox_source``, of the outbox it reads), or ``""``: not
#: checked.
#: Then the events in cursor order, each as ``txid, position, fields`` (txid and position as
#: decimal strings, ``fields`` the entry's ``[field, value, …]`` as a JSON array of strings: one
#: argument per event, which costs the caller far less to send than thirty).
#: A watermark's txids are those of one database: a batch from another source (the source key
#: holds another id) is refused whole, ``SOURCE`` error, before anything is written; the first
#: batch published with a source id records it.
#: An event is added (entry id ``*``) only when its cursor ``(txid, position)`` is after the
#: watermark; the watermark then becomes its cursor. Cursors are compared as pairs of decimal
#: integers of any size (length first, then digits), never as Lua numbers (doubles). Returns
#: ``{published, skipped}``. A key of the wrong type is refused before anything is written; if
#: an event's fields are not a JSON array or XADD fails half-way, the watermark still records
#: what was added, so a retry neither repeats nor loses an entry.
#: A watermark behind ARGV[1] (or gone) means Redis lost writes it had acknowledged, events
#: with them: nothing is added, so no later event lands beyond the gap, and the reply is
#: ``{0, 0, watermark}`` (``""`` when there is none), for the caller to re-send from there.
PUBLISH_LUA = """#!lua
local function after(t, p, wt, wp)
  if #t ~= #wt then return #t > #wt end
  if t ~= wt then return t > wt end
  if #p ~= #wp then return #p > #wp end
  return p > wp
end
local stream_type = redis.call('TYPE', KEYS[1])['ok']
if stream_type ~= 'stream' and stream_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is a ' .. stream_type .. ', not a stream')
end
local mark_type = redis.call('TYPE', KEYS[2])['ok']
if mark_type ~= 'string' and mark_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' is a ' .. mark_type .. ', not a string')
end
local source = ARGV[2]
local recorded = nil
if source ~= '' then
  local source_type = redis.call('TYPE', KEYS[3])['ok']
  if source_type ~= 'string' and source_type ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[3] .. ' is a ' .. source_type .. ', not a string')
  end
  recorded = redis.call('GET', KEYS[3])
  if recorded and recorded ~= source then
    return redis.error_reply('SOURCE ' .. KEYS[1] .. ' is published from the outbox ' ..
      recorded .. ', not from ' .. source .. ': two databases write this stream, and their ' ..
      'transaction ids are not comparable (docs/operations.md, "One stream, one source")')
  end
end
local wt, wp = nil, nil
local mark = redis.call('GET', KEYS[2])
if mark then
  local sep = string.find(mark, ':', 1, true)
  if not sep then
    return redis.error_reply('WATERMARK ' .. KEYS[2] .. ' is malformed: ' .. mark)
  end
  wt, wp = string.sub(mark, 1, sep - 1), string.sub(mark, sep + 1)
end
local seen = ARGV[1]
if seen ~= '' then
  local sep = string.find(seen, ':', 1, true)
  if not sep then
    return redis.error_reply('BADMARK the expected watermark is malformed: ' .. seen)
  end
  if wt == nil or after(string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1), wt, wp) then
    return {0, 0, mark or ''}
  end
end
local published, skipped = 0, 0
local function record()
  if published > 0 then
    redis.call('SET', KEYS[2], wt .. ':' .. wp)
    if source ~= '' and not recorded then redis.call('SET', KEYS[3], source) end
  end
end
local i = 3
while i <= #ARGV do
  local t, p = ARGV[i], ARGV[i + 1]
  if wt == nil or after(t, p, wt, wp) then
    local decoded, fields = pcall(cjson.decode, ARGV[i + 2])
    local reply
    if not decoded or type(fields) ~= 'table' then
      reply = {err = 'BADFIELDS the fields of event ' .. t .. ':' .. p .. ' are not a JSON array'}
    else
      reply = redis.pcall('XADD', KEYS[1], '*', unpack(fields))
    end
    if type(reply) == 'table' and reply['err'] then
      record()
      return redis.error_reply(reply['err'])
    end
    wt, wp = t, p
    published = published + 1
  else
    skipped = skipped + 1
  end
  i = i + 3
end
record()
return {published, skipped}
"""

#: Safe trim. KEYS: a stream. ARGV: retention in ms, ``1`` for exact trimming (``0``: ``~``,
#: whole macro nodes only, much cheaper), ``1`` to honour consumer groups (``0``: retention
#: only, for dead letters). MINID is the lowest of ``now - retention`` (Redis's own clock, the
#: one entry ids come from) and, per group, the smallest pending id or else the id just after
#: last-delivered-id: below it every group has been delivered and acknowledged every entry.
#: Reading the groups and trimming in one script means no XREADGROUP/XACK can interleave.
#: Returns ``{trimmed, minid}``; a missing key or a non-stream is left alone.
TRIM_LUA = """#!lua
local function parse(id)
  local sep = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, sep - 1)), tonumber(string.sub(id, sep + 1))
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return {0, ''} end
local now = redis.call('TIME')
-- Entries younger than the retention are kept: an entry exactly that old (in whole ms) may go.
local floor_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[1])
if floor_ms < 0 then floor_ms = 0 end
local minid = string.format('%d-0', floor_ms + 1)
if ARGV[3] == '1' then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    local needed
    if info['pending'] > 0 then
      needed = redis.call('XPENDING', KEYS[1], info['name'])[2]
    else
      local ms, seq = parse(info['last-delivered-id'])
      needed = string.format('%d-%d', ms, seq + 1)
    end
    if less(needed, minid) then minid = needed end
  end
end
local strategy = '~'
if ARGV[2] == '1' then strategy = '=' end
return {redis.call('XTRIM', KEYS[1], 'MINID', strategy, minid), minid}
"""
