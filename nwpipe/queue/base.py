"""The queue contract: one interface, several engines (SQLite embedded, Redis Streams).

A queue holds INPUT events (the decoded event as JSON bytes, before routing and mapping)
in ``shards`` ordered logs. An event goes to shard :func:`shard_of` of its alert id, so
one alert's events share a shard and keep their order. Routing and mapping run again
when an event is taken from the queue for delivery (pure functions, cheap to redo).

Life of an entry::

    put ──► read (in order, per shard) ──► route+map ──► deliver / dead-letter
                                                           │ (every output that takes it)
    ack(shard, upto) ◄── min of the outputs' marks ◄───────┘

Each output keeps a low-water mark per shard (:meth:`Queue.save_marks`): every entry at
or before it is settled for that output (delivered, dead-lettered, or not routed to it).
A shard is acknowledged up to the minimum of the marks, so nothing is removed before
every output that takes it has settled it, and after a restart an output that was
ahead of a failing one does not resend what it already settled.

Engines: :mod:`nwpipe.queue.sqlite` (one delivering process per file) and
``nwpipe.queue.redis`` (leased shards, many processes). Both are checked by
``tests/test_queue_contract.py``.
"""

from __future__ import annotations

import abc
import asyncio
import zlib
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from nwpipe.errors import NwpipeError

#: order within a shard: SQLite ``(rowid, 0)``; Redis stream id ``(ms, seq)``
Pos = tuple[int, int]

#: the default number of shards of a Redis queue (SQLite keeps one per lane count it
#: was created with; see the engine)
DEFAULT_SHARDS = 16
DEFAULT_PATH = "nwpipe-queue.db"
DEFAULT_MAX_BYTES = 1 << 30
SYNC_MODES = ("normal", "full")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True when it is set.

    Unlike ``asyncio.wait_for`` on Python 3.11, a cancel that arrives just as the event
    is set is never swallowed, so a task stopped while it waits here really stops.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


def public_url(url: str) -> str:
    """``url`` without its user and password, for messages and status."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def shard_of(alert_id: str, shards: int) -> int:
    """The shard of an alert: stable across processes, machines and Python versions.

    ``zlib.crc32`` of the id's UTF-8 bytes (lone surrogates kept, so any ``str`` works)
    modulo ``shards``. Python's ``hash()`` would not do: it is salted per process.
    """
    return zlib.crc32(alert_id.encode("utf-8", "surrogatepass")) % shards


class Entry(namedtuple("Entry", "shard pos data origin at")):
    """One queued input event (immutable): ``shard`` (int), ``pos`` (Pos), ``data`` (the
    event as JSON, bytes), ``origin`` (where it came from, for messages:
    ``"events.jsonl:12"``, ``"serve 10.0.0.5"``), ``at`` (when it was put, unix seconds).

    A named tuple, since one is built per entry read: a frozen dataclass costs about
    three times as much to build.
    """

    __slots__ = ()


class QueueError(NwpipeError):
    """The store cannot be opened, read or written: one clear message, no traceback."""


class QueueFull(QueueError):
    """The queue is past ``max_bytes``: intake waits (``run``) or answers 503 (``serve``)."""


class QueueUnavailable(QueueFull):
    """The store cannot be reached for now (Redis down or restarting).

    A kind of :class:`QueueFull` on purpose: intake handles both the same way, it waits
    and tries again (``run``) or answers 503 with Retry-After (``serve``), and nothing
    is acknowledged upstream meanwhile.
    """


@dataclass(frozen=True)
class OutputBacklog:
    """What waits for one output: entries after its mark, their bytes, the oldest's time."""

    events: int = 0
    bytes: int = 0
    oldest_at: float | None = None


@dataclass(frozen=True)
class ShardStatus:
    """One shard's state.

    ``depth``/``bytes``/``oldest_at`` cover every entry not yet acknowledged;
    ``outputs`` maps each output that saved a mark to what waits after that mark (an
    output without a mark has the whole shard waiting); ``owner`` is the process that
    holds the shard (Redis leases; ``None`` for SQLite); ``pending`` how many entries a
    worker has read and not yet acknowledged (Redis consumer group; ``None`` for SQLite).
    """

    shard: int
    depth: int
    bytes: int
    oldest_at: float | None
    outputs: dict[str, OutputBacklog] = field(default_factory=dict)
    owner: str | None = None
    pending: int | None = None


@dataclass(frozen=True)
class QueueStatus:
    """The whole queue: where it lives, its budget, its shards and its notes."""

    location: str  # a file path or a redis URL without credentials
    max_bytes: int
    shards: tuple[ShardStatus, ...]
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        """Entries not yet acknowledged, all shards together."""
        return sum(s.depth for s in self.shards)

    @property
    def bytes(self) -> int:
        """Bytes of the entries not yet acknowledged, all shards together."""
        return sum(s.bytes for s in self.shards)

    @property
    def oldest_at(self) -> float | None:
        """When the oldest unacknowledged entry was put, or ``None`` when empty."""
        times = [s.oldest_at for s in self.shards if s.oldest_at is not None]
        return min(times) if times else None

    def backlog(self, output: str) -> OutputBacklog:
        """What waits for ``output`` across shards (whole shards where it has no mark)."""
        events = size = 0
        oldest: float | None = None
        for s in self.shards:
            b = s.outputs.get(output) or OutputBacklog(s.depth, s.bytes, s.oldest_at)
            events += b.events
            size += b.bytes
            if b.oldest_at is not None and (oldest is None or b.oldest_at < oldest):
                oldest = b.oldest_at
        return OutputBacklog(events, size, oldest)


class Queue(abc.ABC):
    """A durable, sharded, ordered queue of input events.

    Every method may raise :class:`QueueError` when the store fails; the message names
    the store and the problem. Methods are coroutines so that an engine can use the
    network (Redis) or a writer thread (SQLite) without blocking the event loop.
    """

    #: how many ordered logs the queue has; fixed when the store is created
    shards: int
    #: several processes deliver from this queue, so the shards a process owns change
    #: while it runs (Redis); see :meth:`holds` and :meth:`epoch`
    shared: bool = False
    #: the disk/memory budget in bytes; ``put`` raises QueueFull past it
    max_bytes: int
    #: what the queue was made from (``[queue]``)
    settings: QueueSettings

    @abc.abstractmethod
    async def open(self) -> None:
        """Create the store or check the existing one.

        A shard count that differs from the store's, a corrupt file, a store another
        process holds: :class:`QueueError` with a clear message.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release the store (locks, leases, connections)."""

    @abc.abstractmethod
    async def put(self, items: Sequence[tuple[str, bytes, str]]) -> list[Pos]:
        """Append ``(alert id, event JSON, origin)`` items, each to its alert's shard.

        Returns their positions, in the order of ``items``, only when they are
        durable (SQLite: committed with the configured sync; Redis: XADD answered).
        Calls from many tasks share one commit (group commit) and the event loop
        never waits on disk. Raises :class:`QueueFull` when the store is at
        ``max_bytes`` (nothing of the call is stored then).
        """

    @abc.abstractmethod
    async def owned(self) -> frozenset[int]:
        """The shards this process may deliver from right now, keeping its claim alive.

        SQLite: all (one delivering process per file, held by a lock); Redis: the
        leased shards. A shard that leaves the set must not be read from any more.
        """

    def holds(self, shard: int) -> bool:
        """Whether this process may still deliver what it read from ``shard``, checked
        without waiting (just before each send): False once its claim may have lapsed,
        so that a process that was frozen past its lease sends nothing more."""
        return True

    def epoch(self, shard: int) -> int:
        """Changes each time this process takes ``shard`` anew: what it read before
        belongs to an earlier ownership and is not sent any more."""
        return 0

    async def let_go(self, shard: int) -> None:
        """This process dropped everything it held of ``shard`` (it left :meth:`owned`):
        a shared queue may hand it to another process now."""
        return None  # only a shared queue hands shards over

    @abc.abstractmethod
    async def read(self, shard: int, after: Pos | None, limit: int) -> list[Entry]:
        """Up to ``limit`` entries of ``shard`` strictly after ``after``, in order.

        ``after=None`` reads from the oldest entry not yet acknowledged (for Redis the
        pending entries a previous owner read but did not ack come first, in stream
        order). Never blocks waiting for new entries: see :meth:`wait`.
        """

    async def read_many(self, wanted: Sequence[tuple[int, Pos | None]],
                        limit: int) -> dict[int, list[Entry]]:
        """:meth:`read` for several ``(shard, after)`` at once, by shard; an engine on
        the network (Redis) answers them in one round trip."""
        return {shard: await self.read(shard, after, limit) for shard, after in wanted}

    @abc.abstractmethod
    async def wait(self, timeout: float) -> None:
        """Return when new entries may be there (a put happened), or after ``timeout``."""

    @abc.abstractmethod
    async def ack(self, shard: int, upto: Pos) -> None:
        """Every entry of ``shard`` at or before ``upto`` is settled: remove them.

        Settled means delivered or dead-lettered for every output that takes it.
        SQLite: DELETE; Redis: XACK and trim.
        """

    @abc.abstractmethod
    async def save_marks(self, shard: int, marks: dict[str, Pos]) -> None:
        """Store per-output low-water marks of ``shard`` (output name to position)."""

    @abc.abstractmethod
    async def load_marks(self, shard: int) -> dict[str, Pos]:
        """The per-output marks of ``shard`` saved last (empty when none)."""

    @abc.abstractmethod
    async def set_note(self, key: str, value: str | None) -> None:
        """Keep a small string beside the queue (``None`` removes it).

        Used for what an operator and the next run need to know: where reading a file
        had reached (``input:events.jsonl``) and since when an output is failing
        (``failing:soc``). Notes survive restarts like the entries.
        """

    @abc.abstractmethod
    async def notes(self) -> dict[str, str]:
        """Every note, by key."""

    def approx_depth(self) -> int | None:
        """A cheap local estimate of the entries stored, for a progress line (no I/O);
        None when the engine cannot tell without asking the store."""
        return None

    @abc.abstractmethod
    async def status(self) -> QueueStatus:
        """Per shard: depth, bytes, oldest entry's time, per-output backlog, owner."""


@dataclass(frozen=True)
class QueueSettings:
    """The ``[queue]`` table, validated (``--queue PATH`` overrides ``path``).

    ``url`` set (``redis://`` / ``rediss://``) selects Redis Streams; otherwise the
    SQLite file at ``path`` (relative to the working folder).
    """

    path: str = DEFAULT_PATH
    max_bytes: int = DEFAULT_MAX_BYTES
    sync: str = "normal"  # "normal": safe against a process crash; "full": fsync each commit
    durable: bool = False
    url: str | None = None
    ca_file: str | None = None
    shards: int = DEFAULT_SHARDS
    prefix: str = "nwpipe"
    lease_seconds: float = 15.0
