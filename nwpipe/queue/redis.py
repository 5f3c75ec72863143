"""The queue on Redis Streams: many nwpipe processes, on many machines, share one queue.

Keys (all under ``[queue] prefix``, default ``nwpipe``)::

    PREFIX:meta        hash    shards = N (fixed when created, checked at every start)
    PREFIX:s:N         stream  shard N's entries (fields d = event JSON, o = origin);
                               consumer group "nwpipe"; an entry leaves on ack (XACK + trim)
    PREFIX:bytes       hash    shard -> bytes of its entries not yet acknowledged
    PREFIX:lease:N     string  the worker that delivers shard N, with an expiry
    PREFIX:workers     zset    live workers (score: when their heartbeat runs out, ms)
    PREFIX:marks:N     hash    output -> its low-water mark in shard N ("ms-seq")
    PREFIX:notes       hash    small notes beside the queue
    PREFIX:dead        stream  dead-letter records (see nwpipe.queue.redisdead)

Ownership. A process that delivers (it calls :meth:`RedisQueue.owned`) joins the
workers: a heartbeat every ``lease_seconds / 5`` renews its leases and takes free shards
up to its fair share (``shards / live workers``, the first ``shards % workers`` workers
by name take one more). Shards past its share are released only once everything read
from them was acknowledged (or after ``lease_seconds``), so the next owner does not race
the last deliveries of the previous one. A process counts its leases valid for 2/3 of
``lease_seconds`` after the renewal was *sent*: one that cannot renew (Redis down, the
process stopped) stops reading a shard well before anyone else may take it. Reads and
acks are also checked against the lease inside Redis (a Lua script), so a process that
was frozen past its lease reads and acknowledges nothing when it wakes up.

A new owner first takes over the previous owner's pending entries (XAUTOCLAIM: read but
not acknowledged) and delivers them again, in stream order: at-least-once, with the same
delivery ids, and per-alert order kept because an alert lives in one shard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from nwpipe.aio import cancel_and_wait
from nwpipe.queue.base import (
    Entry,
    OutputBacklog,
    Pos,
    Queue,
    QueueError,
    QueueFull,
    QueueSettings,
    QueueStatus,
    QueueUnavailable,
    ShardStatus,
    public_url,
    shard_of,
    wait_event,
)

try:
    import redis.asyncio as aioredis
    from redis import exceptions as rexc
except ImportError:  # pragma: no cover - exercised by the missing-package test in a subprocess
    aioredis = None  # type: ignore[assignment]
    rexc = None  # type: ignore[assignment]

log = logging.getLogger("nwpipe")

GROUP = "nwpipe"
#: the share of ``lease_seconds`` after a renewal was sent during which a process
#: still reads from its shards; the rest is the safety margin against slow clocks
VALID_SHARE = 2 / 3
#: how many heartbeats per lease period
BEATS_PER_LEASE = 5
#: entries per XAUTOCLAIM call when a new owner takes over pending entries
CLAIM_BATCH = 1000
#: per-output backlog counted by ``status`` at most this far (it walks the stream)
STATUS_SCAN_LIMIT = 100_000

# One heartbeat, atomic: stay among the live workers, forget the dead, renew my leases,
# take free shards up to my fair share. Times are Redis's own clock, so machines with
# skewed clocks agree. Returns {target, my shards...}.
_BEAT = """
local prefix, me, lease_ms, shards = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local workers = prefix .. ':workers'
redis.call('ZADD', workers, now + lease_ms, me)
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now)
local live = redis.call('ZRANGE', workers, 0, -1)
table.sort(live)
local rank = 0
for i, w in ipairs(live) do if w == me then rank = i - 1 end end
local n = #live
local target = math.floor(shards / n)
if rank < shards % n then target = target + 1 end
local mine, free = {}, {}
for i = 0, shards - 1 do
  local key = prefix .. ':lease:' .. i
  local owner = redis.call('GET', key)
  if owner == me then
    redis.call('PEXPIRE', key, lease_ms)
    table.insert(mine, i)
  elseif not owner then
    table.insert(free, i)
  end
end
-- start at a place that depends on the rank, so that workers joining together do not
-- all go for the same free shards
local start = (#free > 0) and (rank % #free) or 0
for j = 0, #free - 1 do
  if #mine >= target then break end
  local i = free[((start + j) % #free) + 1]
  if redis.call('SET', prefix .. ':lease:' .. i, me, 'NX', 'PX', lease_ms) then
    table.insert(mine, i)
  end
end
table.insert(mine, 1, target)
return mine
"""

# Append events: ARGV = prefix, then (shard, data, origin) for each event. One command
# for a whole group commit: far less client work than one XADD each. Returns the new
# ids in order, then (shard, bytes now queued in it) for each shard written.
_PUT = """
local prefix = ARGV[1]
local ids, sizes, order = {}, {}, {}
for i = 2, #ARGV, 3 do
  local shard = ARGV[i]
  local key = prefix .. ':s:' .. shard
  table.insert(ids, redis.call('XADD', key, '*', 'd', ARGV[i + 1], 'o', ARGV[i + 2]))
  if not sizes[shard] then sizes[shard] = 0; table.insert(order, shard) end
  sizes[shard] = sizes[shard] + #ARGV[i + 1]
end
for _, shard in ipairs(order) do
  table.insert(ids, shard)
  table.insert(ids, redis.call('HINCRBY', prefix .. ':bytes', shard, sizes[shard]))
end
return ids
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _id_parts(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


# Read a shard, only while holding its lease. ARGV: me, start ('-' or '(ms-seq'), limit,
# claim (1: take over every pending entry of earlier owners first). Entries past the
# group's last-delivered id enter my pending list (XREADGROUP), so that a next owner
# knows what I had read. Returns {newest id seen, rows}, or false when the lease is not
# mine.
_READ = """
local lease, stream = KEYS[1], KEYS[2]
local me, start, limit, claim = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', lease) ~= me then return false end
if claim == '1' then
  local cursor = '0-0'
  repeat
    local r = redis.call('XAUTOCLAIM', stream, 'nwpipe', me, 0, cursor,
                         'COUNT', CLAIM_BATCH, 'JUSTID')
    cursor = r[1]
  until cursor == '0-0'
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, 'nwpipe')) do
    local name, pending
    for k = 1, #c, 2 do
      if c[k] == 'name' then name = c[k + 1] elseif c[k] == 'pending' then pending = c[k + 1] end
    end
    if name ~= me and pending == 0 then
      redis.call('XGROUP', 'DELCONSUMER', stream, 'nwpipe', name)
    end
  end
end
local rows = redis.call('XRANGE', stream, start, '+', 'COUNT', limit)
if #rows == 0 then
  -- nothing after start: tell the newest id, so that wait() blocks for what comes next
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  return {newest[1] and newest[1][1] or '0-0', rows}
end
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, ld
  for k = 1, #g, 2 do
    if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'last-delivered-id' then ld = g[k + 1] end
  end
  if name == 'nwpipe' then last = ld end
end
local function after(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local new = 0
for _, row in ipairs(rows) do if after(row[1], last) then new = new + 1 end end
if new > 0 then
  redis.call('XREADGROUP', 'GROUP', 'nwpipe', me, 'COUNT', new, 'STREAMS', stream, '>')
end
return {rows[#rows][1], rows}
""".replace("CLAIM_BATCH", str(CLAIM_BATCH))

# Acknowledge a shard up to an id, only while holding its lease: XACK, trim, and take
# the entries' bytes off the budget. ARGV: me, upto id, threshold id (upto + 1), shard.
# Returns the number of entries removed, or -1 when the lease is not mine.
_ACK = """
local lease, stream, bytes = KEYS[1], KEYS[2], KEYS[3]
local me, upto, threshold, shard = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('GET', lease) ~= me then return -1 end
local rows = redis.call('XRANGE', stream, '-', upto)
if #rows == 0 then return 0 end
local size, ids = 0, {}
for _, row in ipairs(rows) do
  local f = row[2]
  for k = 1, #f, 2 do if f[k] == 'd' then size = size + #f[k + 1] end end
  table.insert(ids, row[1])
  if #ids == 1000 then redis.call('XACK', stream, 'nwpipe', unpack(ids)); ids = {} end
end
if #ids > 0 then redis.call('XACK', stream, 'nwpipe', unpack(ids)) end
redis.call('XTRIM', stream, 'MINID', threshold)
redis.call('HINCRBY', bytes, shard, -size)
return #rows
"""


def _sid(pos: Pos) -> str:
    return f"{pos[0]}-{pos[1]}"


def check_url(url: str) -> str | None:
    """What is wrong with a ``[queue] url`` (``None`` when nothing is)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("redis", "rediss"):
        return "must start with redis:// or rediss:// (TLS)"
    if not parts.hostname:
        return "has no host (redis://host:6379/0)"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"the database after the host must be a number, not {db!r}"
    return None


def worker_name() -> str:
    """A name for this process among the workers: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(24):06x}"


class RedisQueue(Queue):
    """The queue contract on Redis Streams with leased shards (see the module docstring)."""

    shared = True

    def __init__(self, settings: QueueSettings, *, name: str | None = None):
        if aioredis is None:
            raise QueueError(
                "[queue] url is a Redis URL, but the 'redis' package is not installed: "
                "pip install 'nwpipe[redis]'")
        problem = check_url(settings.url or "")
        if problem:
            raise QueueError(f"[queue] url {public_url(settings.url or '')!r} {problem}")
        self.settings = settings
        self.shards = settings.shards
        self.max_bytes = settings.max_bytes
        self.prefix = settings.prefix
        self.url: str = settings.url or ""
        self.location = public_url(self.url)
        self.name = name or worker_name()
        self.lease_ms = max(1000, int(settings.lease_seconds * 1000))
        self._client: Any = None  # redis.asyncio.Redis, once open
        self._blocking: Any = None  # a connection of its own for XREAD BLOCK in wait()
        self._scripts: dict = {}
        # group commit: puts queued here are sent in one pipeline by one task at a time
        self._pending: list[tuple[list[tuple[int, bytes, str]], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._bytes_total = 0  # as Redis said after the last put
        self._shard_bytes: dict[int, int] = {}
        # notes go with the next group commit (input progress is noted after every put;
        # a round trip of its own each time would halve the intake's rate)
        self._notes_pending: dict[str, str | None] = {}
        self._put_event = asyncio.Event()
        # ownership
        self._beat_task: asyncio.Task | None = None
        self._first_beat: asyncio.Future | None = None
        self._mine: frozenset[int] = frozenset()
        self._valid_until = 0.0
        self._target = 0
        self._releasing: dict[int, float] = {}  # shard -> give it up by (monotonic)
        self._claimed: set[int] = set()  # shards whose earlier owners' entries I took
        self._read_upto: dict[int, Pos] = {}
        self._acked_upto: dict[int, Pos] = {}
        self._last_seen: dict[int, str] = {}  # for wait(): newest id read per shard
        self.lost: set[int] = set()  # shards taken from me (lease expired), for messages
        self._epochs: dict[int, int] = {}  # shard -> how often this process took it

    # ---- keys

    def _stream(self, shard: int) -> str:
        return f"{self.prefix}:s:{shard}"

    def _lease(self, shard: int) -> str:
        return f"{self.prefix}:lease:{shard}"

    # ---- errors

    def _error(self, exc: Exception, doing: str) -> QueueError:
        where = f"redis queue {self.location} (prefix {self.prefix!r})"
        text = str(exc)
        if isinstance(exc, rexc.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
            return QueueError(f"{where}: authentication failed while {doing}: check the "
                              "password in [queue] url")
        if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, OSError)):
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return QueueUnavailable(f"{where}: cannot reach Redis while {doing}: {text}")
        return QueueError(f"{where}: {doing} failed: {exc}")

    async def _call(self, doing: str, coro):
        try:
            return await coro
        except QueueError:
            raise
        except (rexc.RedisError, OSError) as exc:
            raise self._error(exc, doing) from None

    # ---- open / close

    async def open(self) -> None:
        """Connect, create the shard streams and their group, check the shard count."""
        url = self.url
        kwargs: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 10,
                                  "decode_responses": False, "health_check_interval": 15}
        if url.startswith("rediss://") and self.settings.ca_file:
            kwargs["ssl_ca_certs"] = self.settings.ca_file
        try:
            self._client = aioredis.Redis.from_url(url, **kwargs)
            kwargs["socket_timeout"] = None
            self._blocking = aioredis.Redis.from_url(url, **kwargs)
        except (ValueError, rexc.RedisError) as exc:
            raise QueueError(f"[queue] url {self.location!r}: {exc}") from None
        r = self._client
        for name, text in (("beat", _BEAT), ("release", _RELEASE), ("read", _READ), ("ack", _ACK),
                           ("put", _PUT)):
            self._scripts[name] = r.register_script(text)
        meta = f"{self.prefix}:meta"
        await self._call("opening the queue", r.hsetnx(meta, "shards", self.shards))
        stored = int(await self._call("opening the queue", r.hget(meta, "shards")))
        if stored != self.shards:
            raise QueueError(
                f"redis queue {self.location} (prefix {self.prefix!r}) was created with "
                f"{stored} shards, but [queue] shards = {self.shards}: the shard count of a "
                f"queue is fixed; set shards = {stored} (or use another prefix for a new queue)")
        pipe = r.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.xgroup_create(self._stream(shard), GROUP, id="0", mkstream=True)
        results = await self._call("opening the queue", pipe.execute(raise_on_error=False))
        for res in results:
            if isinstance(res, Exception) and "BUSYGROUP" not in str(res):
                raise self._error(res, "creating the shard streams")
        await self._refresh_bytes()

    async def _refresh_bytes(self) -> None:
        sizes = await self._call("checking the queue size",
                                 self._client.hgetall(f"{self.prefix}:bytes"))
        self._shard_bytes = {int(k): int(v) for k, v in sizes.items()}
        self._bytes_total = sum(self._shard_bytes.values())

    async def close(self) -> None:
        """Send what is queued, give up leases and leave the workers; close connections."""
        if self._client is None:
            return
        if self._notes_pending:
            self._start_flusher()
        if self._flusher is not None:
            try:
                await self._flusher
            except Exception:  # noqa: BLE001 - its callers got the error already
                pass
        if self._beat_task is not None:
            # cancelled again should a Redis call swallow the cancel: the heartbeat
            # would else beat on, and closing the queue would wait for it forever
            await cancel_and_wait((self._beat_task,))
            self._beat_task = None
            # leave at once, so that the others take the shards at their next beat
            # instead of when the leases run out
            try:
                for shard in self._mine:
                    await self._scripts["release"](keys=[self._lease(shard)], args=[self.name])
                await self._client.zrem(f"{self.prefix}:workers", self.name)
            except (rexc.RedisError, OSError) as exc:
                log.warning("%s", self._error(exc, "giving up the shards"))
            self._mine = frozenset()
        for client in (self._client, self._blocking):
            try:
                await client.aclose()
            except (rexc.RedisError, OSError):
                pass
        self._client = None

    # ---- intake

    async def put(self, items: Sequence[tuple[str, bytes, str]]) -> list[Pos]:
        """XADD each item to its shard; returns their positions once Redis answered.

        Calls from many tasks share one pipeline (one round trip). Raises
        :class:`QueueFull` past ``max_bytes`` and :class:`QueueUnavailable` when Redis
        cannot be reached (the caller waits and retries, or answers 503).
        """
        if not items:
            return []
        size = sum(len(data) for _, data, _ in items)
        if self._bytes_total + size > self.max_bytes:
            # other processes may have drained the queue meanwhile: ask Redis again
            await self._refresh_bytes()
            if self._bytes_total + size > self.max_bytes:
                raise QueueFull(
                    f"redis queue {self.location} holds {self._bytes_total} bytes; "
                    f"{size} more would pass its [queue] max_bytes = {self.max_bytes}")
        rows = [(shard_of(aid, self.shards), data, origin) for aid, data, origin in items]
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((rows, fut))
        self._start_flusher()
        return await fut

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._pending or self._notes_pending:
            batch, self._pending = self._pending, []
            notes, self._notes_pending = self._notes_pending, {}
            pipe = self._client.pipeline(transaction=False)
            args: list = [self.prefix]
            for rows, _ in batch:
                for shard, data, origin in rows:
                    args += (shard, data, origin.encode("utf-8", "replace"))
            if len(args) > 1:
                await self._scripts["put"](keys=[], args=args, client=pipe)
            for key, value in notes.items():
                if value is None:
                    pipe.hdel(f"{self.prefix}:notes", key)
                else:
                    pipe.hset(f"{self.prefix}:notes", key, value)
            try:
                results = await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - every waiting put gets the error
                err = self._error(exc, "adding events") if not isinstance(exc, QueueError) else exc
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                for key, value in notes.items():  # kept for the next commit
                    self._notes_pending.setdefault(key, value)
                if not batch:
                    log.warning("%s", err)
                if not self._pending:
                    return  # the notes wait for the next put (or close)
                continue
            # the script answers each written shard's new total; other shards keep the
            # last known (acknowledgements elsewhere only make the real total smaller)
            count = sum(len(rows) for rows, _ in batch)
            reply = results[0] if count else []
            totals = reply[count:]
            for shard, total in zip(totals[::2], totals[1::2]):
                self._shard_bytes[int(shard)] = int(total)
            self._bytes_total = sum(self._shard_bytes.values())
            at = 0
            for rows, fut in batch:
                ids = reply[at:at + len(rows)]
                at += len(rows)
                if not fut.done():
                    fut.set_result([_id_parts(i.decode() if isinstance(i, bytes) else i)
                                    for i in ids])
            self._put_event.set()

    # ---- ownership

    async def owned(self) -> frozenset[int]:
        """The shards this process delivers right now (joining the workers on first call)."""
        if self._beat_task is None:
            self._first_beat = asyncio.get_running_loop().create_future()
            self._beat_task = asyncio.ensure_future(self._beat_loop())
            await asyncio.shield(self._first_beat)
        if time.monotonic() >= self._valid_until:
            return frozenset()
        return self._mine - self._releasing.keys()

    async def _beat_loop(self) -> None:
        interval = self.lease_ms / 1000 / BEATS_PER_LEASE
        failing = False
        while True:
            try:
                await self._beat()
                if failing:
                    log.info("redis queue %s: reachable again; shard leases renewed", self.location)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep beating; leases lapse on their own
                if not failing:  # once per outage, not every beat
                    err = (exc if isinstance(exc, QueueError)
                           else self._error(exc, "renewing shard leases"))
                    log.warning("%s; delivery from its shards stops until it answers", err)
                failing = True
            finally:
                if self._first_beat is not None and not self._first_beat.done():
                    self._first_beat.set_result(None)
            await asyncio.sleep(interval)

    async def _beat(self) -> None:
        sent = time.monotonic()
        reply = await self._scripts["beat"](
            keys=[], args=[self.prefix, self.name, self.lease_ms, self.shards])
        target, mine = int(reply[0]), frozenset(int(s) for s in reply[1:])
        lost = sorted(s for s in self._mine - mine if s not in self._releasing)
        for shard in lost:
            self._forget(shard)
        if lost:
            self.lost.update(lost)
            log.warning("redis queue %s: the lease of shard%s %s ran out before it was renewed; "
                        "%s taken over by another worker, which delivers what this one had not "
                        "acknowledged", self.location, "s" if len(lost) > 1 else "",
                        ", ".join(map(str, lost)), "they are" if len(lost) > 1 else "it is")
        # Renewed after the leases had lapsed here (Redis was away, or this process
        # stalled): deliveries may have been revoked meanwhile (holds() said no), so every
        # shard starts a new ownership and is read again from its marks.
        lapsed = time.monotonic() >= self._valid_until
        for shard in (mine if lapsed else mine - self._mine):
            self._claimed.discard(shard)  # a new owner claims the earlier owner's entries first
            self._epochs[shard] = self._epochs.get(shard, 0) + 1
        self._releasing = {s: t for s, t in self._releasing.items() if s in mine}
        self._mine = mine
        self._target = target
        self._valid_until = sent + self.lease_ms / 1000 * VALID_SHARE
        # past my fair share: stop reading the extra shards, hand them over once what
        # was read from them is acknowledged (or the lease period has passed)
        extra = len(mine) - target
        if extra > 0:
            keep = sorted(mine - self._releasing.keys(), reverse=True)
            for shard in keep[:extra - len(self._releasing)]:
                self._releasing[shard] = sent + self.lease_ms / 1000
        now = time.monotonic()
        for shard, deadline in list(self._releasing.items()):
            read, acked = self._read_upto.get(shard), self._acked_upto.get(shard)
            if read is None or (acked is not None and acked >= read) or now >= deadline:
                await self._release(shard)

    async def _release(self, shard: int) -> None:
        await self._scripts["release"](keys=[self._lease(shard)], args=[self.name])
        self._releasing.pop(shard, None)
        self._mine = self._mine - {shard}
        self._forget(shard)

    async def let_go(self, shard: int) -> None:
        """The caller dropped what it held of a shard being handed over: release it now."""
        if shard in self._releasing:
            try:
                await self._release(shard)
            except (rexc.RedisError, OSError):
                pass  # the next beat tries again, or the lease runs out

    def _forget(self, shard: int) -> None:
        self._claimed.discard(shard)
        self._read_upto.pop(shard, None)
        self._acked_upto.pop(shard, None)
        self._last_seen.pop(shard, None)

    def holds(self, shard: int) -> bool:
        """Whether the lease of ``shard`` is surely still this process's (no Redis call)."""
        return shard in self._mine and time.monotonic() < self._valid_until

    def epoch(self, shard: int) -> int:
        """How many times this process has taken ``shard``."""
        return self._epochs.get(shard, 0)

    # ---- delivery side

    async def read(self, shard: int, after: Pos | None, limit: int) -> list[Entry]:
        """Entries of ``shard`` after ``after`` (``None``: the oldest not acknowledged).

        Only while this process holds the shard's lease (checked in Redis); returns
        nothing otherwise. The first read after taking a shard claims the entries the
        previous owner had read and not acknowledged, so they come first, in order.
        """
        return (await self.read_many([(shard, after)], limit)).get(shard, [])

    async def read_many(self, wanted: Sequence[tuple[int, Pos | None]],
                        limit: int) -> dict[int, list[Entry]]:
        """:meth:`read` of several shards in one round trip (one pipeline)."""
        if self._beat_task is None:
            await self.owned()  # reading makes this process a worker
        now = time.monotonic()
        asked = [(shard, after) for shard, after in wanted
                 if shard in self._mine and shard not in self._releasing
                 and now < self._valid_until]
        if not asked:
            return {}
        pipe = self._client.pipeline(transaction=False)
        claims = []
        for shard, after in asked:
            start = "-" if after is None else f"({_sid(after)}"
            claim = shard not in self._claimed
            claims.append(claim)
            # queues the call in the pipeline (sent, with SCRIPT LOAD if needed, by execute)
            await self._scripts["read"](keys=[self._lease(shard), self._stream(shard)],
                                        args=[self.name, start, max(1, int(limit)),
                                              "1" if claim else "0"], client=pipe)
        replies = await self._call("reading shards", pipe.execute())
        return {shard: self._entries(shard, reply)
                for (shard, _), reply in zip(asked, replies)}

    def _entries(self, shard: int, reply) -> list[Entry]:
        if reply is None:  # the lease is gone
            self._mine = self._mine - {shard}
            self.lost.add(shard)
            return []
        newest, rows = reply
        newest = newest.decode() if isinstance(newest, bytes) else newest
        self._claimed.add(shard)
        entries = []
        for sid, fields in rows:
            sid = sid.decode() if isinstance(sid, bytes) else sid
            pos = _id_parts(sid)
            f = dict(zip(fields[::2], fields[1::2]))
            origin = f.get(b"o", b"").decode("utf-8", "replace")
            entries.append(Entry(shard, pos, f.get(b"d", b""), origin,
                                 pos[0] / 1000))
        if entries and self._read_upto.get(shard, (0, 0)) < entries[-1].pos:
            self._read_upto[shard] = entries[-1].pos
        seen = _id_parts(self._last_seen.get(shard, "0-0"))
        self._last_seen[shard] = _sid(max(seen, _id_parts(newest)))
        return entries

    async def wait(self, timeout: float) -> None:
        """Until an owned shard may have new entries (XREAD BLOCK), or ``timeout``."""
        # the shards the caller has read: a shard it has not read yet, it reads when it
        # looks again (after ``timeout`` at the latest), so nothing is missed
        streams = {self._stream(s): self._last_seen[s] for s in self._mine
                   if s not in self._releasing and s in self._last_seen}
        if not streams or time.monotonic() >= self._valid_until:
            self._put_event.clear()
            await wait_event(self._put_event, timeout)
            return
        try:
            await self._blocking.xread(streams, count=1, block=max(1, int(timeout * 1000)))
        except (rexc.RedisError, OSError):
            await asyncio.sleep(min(timeout, 1.0))  # Redis down: the caller's next call says so

    async def ack(self, shard: int, upto: Pos) -> None:
        """XACK and trim every entry of ``shard`` at or before ``upto`` (lease checked)."""
        if self._beat_task is None:
            await self.owned()  # acknowledging makes this process a worker, like reading
        threshold = f"{upto[0]}-{upto[1] + 1}"
        removed = await self._call("acknowledging entries", self._scripts["ack"](
            keys=[self._lease(shard), self._stream(shard), f"{self.prefix}:bytes"],
            args=[self.name, _sid(upto), threshold, shard]))
        if int(removed) < 0:
            # another worker owns the shard now: it delivers these entries again
            self._mine = self._mine - {shard}
            self.lost.add(shard)
            return
        if self._acked_upto.get(shard, (0, 0)) < upto:
            self._acked_upto[shard] = upto

    async def save_marks(self, shard: int, marks: dict[str, Pos]) -> None:
        """Store per-output marks of ``shard`` (a hash ``PREFIX:marks:N``)."""
        if not marks:
            return
        await self._call("saving output marks", self._client.hset(
            f"{self.prefix}:marks:{shard}", mapping={k: _sid(v) for k, v in marks.items()}))

    async def load_marks(self, shard: int) -> dict[str, Pos]:
        """The per-output marks of ``shard`` saved last."""
        raw = await self._call("loading output marks",
                               self._client.hgetall(f"{self.prefix}:marks:{shard}"))
        return {k.decode(): _id_parts(v.decode()) for k, v in raw.items()}

    async def set_note(self, key: str, value: str | None) -> None:
        """Keep (or with ``None`` remove) a note in ``PREFIX:notes``: sent with the next
        group commit, without a round trip of its own (and at the latest by close())."""
        self._notes_pending[key] = value
        self._start_flusher()

    async def notes(self) -> dict[str, str]:
        """Every note, by key."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        raw = await self._call("reading notes", self._client.hgetall(f"{self.prefix}:notes"))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def status(self) -> QueueStatus:
        """Per shard: length, bytes, oldest entry's time, pending, owner, per-output backlog."""
        r = self._client
        pipe = r.pipeline(transaction=False)
        for shard in range(self.shards):
            stream = self._stream(shard)
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
            pipe.xpending(stream, GROUP)
            pipe.get(self._lease(shard))
            pipe.hgetall(f"{self.prefix}:marks:{shard}")
        pipe.hgetall(f"{self.prefix}:bytes")
        res = await self._call("reading the queue status", pipe.execute())
        sizes = {int(k): int(v) for k, v in res[-1].items()}
        shards = []
        for shard in range(self.shards):
            depth, first, pending, owner, marks = res[shard * 5:shard * 5 + 5]
            oldest = _id_parts(first[0][0].decode())[0] / 1000 if first else None
            outputs = {}
            for name, mark in marks.items():
                outputs[name.decode()] = await self._backlog(shard, _id_parts(mark.decode()))
            shards.append(ShardStatus(
                shard=shard, depth=int(depth), bytes=max(0, sizes.get(shard, 0)), oldest_at=oldest,
                outputs=outputs, owner=owner.decode("utf-8", "replace") if owner else None,
                pending=int(pending["pending"]) if pending else 0))
        workers = await self._call("reading the queue status",
                                   r.zrange(f"{self.prefix}:workers", 0, -1))
        notes = await self.notes()
        notes.setdefault("workers", " ".join(w.decode("utf-8", "replace") for w in workers))
        return QueueStatus(location=self.location, max_bytes=self.max_bytes, shards=tuple(shards),
                           notes=notes)

    async def _backlog(self, shard: int, mark: Pos) -> OutputBacklog:
        events = size = 0
        oldest = None
        start = f"({_sid(mark)}"
        while events < STATUS_SCAN_LIMIT:
            rows = await self._call("reading the queue status",
                                    self._client.xrange(self._stream(shard), min=start, count=1000))
            if not rows:
                break
            if oldest is None:
                oldest = _id_parts(rows[0][0].decode())[0] / 1000
            events += len(rows)
            for _, fields in rows:
                size += len(fields.get(b"d", b""))
            start = f"({rows[-1][0].decode()}"
        return OutputBacklog(events, size, oldest)


async def probe(settings: QueueSettings) -> tuple[bool, str]:
    """``nwpipe check --probe`` for a Redis queue: does Redis answer, does the shard count
    match? Returns ``(ok, message)``; changes nothing in Redis."""
    where = f"{public_url(settings.url or '')} (prefix {settings.prefix!r})"
    if aioredis is None:
        return False, f"{where}: the 'redis' package is not installed: pip install 'nwpipe[redis]'"
    kwargs: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 10}
    url = settings.url or ""
    if url.startswith("rediss://") and settings.ca_file:
        kwargs["ssl_ca_certs"] = settings.ca_file
    client = aioredis.Redis.from_url(url, **kwargs)
    try:
        started = time.monotonic()
        await client.ping()
        took = (time.monotonic() - started) * 1000
        info = await client.info("server")
        stored = await client.hget(f"{settings.prefix}:meta", "shards")
        live = await client.zcount(f"{settings.prefix}:workers", int(time.time() * 1000), "+inf")
        version = info.get("redis_version", "?")
        if stored is None:
            return True, (f"{where}: OK (Redis {version}, answered in {took:.0f} ms); no queue "
                          f"yet: the first start creates it with {settings.shards} shards")
        if int(stored) != settings.shards:
            return False, (f"{where}: Redis answers, but the queue has {int(stored)} shards and "
                           f"[queue] shards = {settings.shards}: set shards = {int(stored)}")
        return True, (f"{where}: OK (Redis {version}, answered in {took:.0f} ms; "
                      f"{settings.shards} shards as configured; {live} live worker"
                      f"{'' if live == 1 else 's'})")
    except (rexc.RedisError, OSError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, rexc.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
            return False, f"{where}: authentication failed: check the password in [queue] url"
        return False, f"{where}: cannot reach Redis: {text}"
    finally:
        await client.aclose()
