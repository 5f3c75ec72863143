"""Deliver from the durable queue: one feed per output, marks, acknowledgements.

Each output has a *feed*: a task that reads the queue's shards in order, routes and
maps each entry again (pure functions, cheap to redo) and hands the output's own
deliveries to its DeliveryEngine. A feed waits only on its own engine, so a failing
output with a full memory queue never holds up the others: its backlog simply stays
on disk, unread, until it has room again. Memory stays bounded by each output's
``queue_size``, whatever the backlog on disk.

Per shard, each feed keeps a low-water *mark*: every entry at or before it is settled
for that output (delivered, dead-lettered, or not routed to it). The shard is
acknowledged (removed from the queue) up to the lowest mark of all configured outputs,
and only after the dead-letter file is on disk, so nothing leaves the queue before
every output that takes it has settled it. Marks are saved with the queue, so that
after a restart an output that was ahead does not send again what it settled.

A shared queue (Redis: several processes deliver from it) gives this process some of
its shards, and that set changes while it runs: the dispatcher looks every
``OWNERSHIP_INTERVAL``. A shard it gains is read from its feeds' saved marks; a shard it
loses (its fair share shrank, or its lease ran out) is dropped: its feeds' state is
forgotten and the deliveries still held in memory are revoked, neither sent nor
dead-lettered, since the shard's next owner delivers them. The engines also ask the
queue just before each send (``Queue.holds``), so a process that was frozen past its
lease sends nothing more of those shards when it wakes up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Callable

import orjson

from nwpipe.aio import cancel_and_wait
from nwpipe.outputs import Delivery
from nwpipe.queue.base import Entry, Pos, Queue, QueueError, QueueUnavailable, wait_event

if TYPE_CHECKING:  # pragma: no cover
    from nwpipe.engine.delivery import DeliveryEngine

log = logging.getLogger("nwpipe")

#: entries read from a shard at a time
READ_BATCH = 512
#: seconds a feed waits for new entries before it looks again (a put wakes it sooner)
IDLE_WAIT = 0.1
#: a shared queue's ownership changes while it runs: looked at this often (seconds)
OWNERSHIP_INTERVAL = 0.25
#: a shared queue is acknowledged at most this often (seconds): each pass costs round
#: trips to the store per shard, and settled deliveries come all the time
SHARED_ACK_SPACING = 0.1
#: seconds between tries while the queue's store cannot be reached (Redis down)
UNAVAILABLE_WAIT = 0.5

#: the ticket of a delivery whose shard this process lost (see Dispatcher.drop)
REVOKED = "revoked"


def split_origin(origin: str) -> tuple[str, int]:
    """``"events.jsonl:12"`` -> ``("events.jsonl", 12)``; the line is 0 when absent."""
    source, sep, line = origin.rpartition(":")
    if sep and line.isdigit():
        return source, int(line)
    return origin, 0


class _Slot:
    """One entry a feed handed to its engine (or passed over), in read order."""

    __slots__ = ("pos", "settled")

    def __init__(self, pos: Pos, settled: bool):
        self.pos = pos
        self.settled = settled


class Feed:
    """One output's reader of the queue: cursor, entries in flight, mark, per shard."""

    def __init__(self, name: str, engine: DeliveryEngine):
        self.name = name
        self.engine = engine
        self.cursor: dict[int, Pos | None] = {}  # last entry read (None: before the oldest)
        self.mark: dict[int, Pos | None] = {}    # everything at or before it is settled
        self._slots: dict[int, deque[_Slot]] = {}
        self._open: dict[tuple[int, Pos], _Slot] = {}
        self.done = False
        self.task: asyncio.Task | None = None

    def start_at(self, shard: int, pos: Pos | None) -> None:
        """Read ``shard`` after ``pos`` (a saved mark), everything before being settled."""
        self.cursor[shard] = pos
        self.mark[shard] = pos
        self._slots[shard] = deque()

    def taken(self, shard: int, pos: Pos) -> None:
        """The entry at ``pos`` went to the engine: the mark waits for it to settle."""
        slot = _Slot(pos, False)
        self._slots[shard].append(slot)
        self._open[(shard, pos)] = slot

    def passed(self, shard: int, pos: Pos) -> None:
        """The entry at ``pos`` is settled for this output already (not for it, or failed
        to map and dead-lettered)."""
        slots = self._slots[shard]
        if not slots:
            self.mark[shard] = pos
        elif slots[-1].settled:
            slots[-1].pos = pos  # consecutive settled entries: one slot is enough
        else:
            slots.append(_Slot(pos, True))

    def settle(self, shard: int, pos: Pos) -> None:
        """The engine delivered or dead-lettered the entry at ``pos``."""
        slot = self._open.pop((shard, pos), None)
        if slot is None:
            return
        slot.settled = True
        slots = self._slots[shard]
        while slots and slots[0].settled:
            self.mark[shard] = slots.popleft().pos

    @property
    def in_flight(self) -> int:
        """Entries handed to the engine and not settled yet."""
        return len(self._open)


class Dispatcher:
    """Runs the feeds of every output and acknowledges what all of them settled.

    ``submit(feed, entry, event, source, line)`` is the pipeline's route-and-map step
    for one output: it returns a Delivery for the engine, or None when the entry is
    settled for that output without one (not routed to it, or dead-lettered).
    """

    def __init__(self, queue: Queue, engines: dict[str, DeliveryEngine], *,
                 handle: Callable[[Feed, Entry, dict, str, int], Delivery | None],
                 flush: Callable[[], None], others: frozenset[str] = frozenset()):
        self.queue = queue
        self.handle = handle
        self.flush = flush
        #: configured outputs without a feed in this process (``queue drain --output``):
        #: their saved marks still hold back the acknowledgement
        self.others = others
        self.feeds = {name: Feed(name, engine) for name, engine in engines.items()}
        self.shards: frozenset[int] = frozenset()
        self._acked: dict[int, Pos | None] = {}
        self._saved: dict[int, dict[str, Pos]] = {}
        self._other_marks: dict[int, dict[str, Pos]] = {}
        self._input_ended = asyncio.Event()
        self._stopping = False
        self._acker: asyncio.Task | None = None
        self._room = asyncio.Event()  # set after an acknowledgement removed entries
        # set when a mark moved: the acknowledgement follows as soon as the last one is
        # committed, so what settled meanwhile shares one write (and a crash re-sends
        # little more than what was in flight)
        self._moved = asyncio.Event()
        #: entries removed from the queue by this run
        self.acked = 0
        #: shared queue: per owned shard, the ownership its feeds' state belongs to
        self._epochs: dict[int, int] = {}
        self._unavailable: str | None = None  # the store's error, said once per outage

    # -- setup ----------------------------------------------------------------------

    async def load(self, starts: dict[str, dict[int, Pos | None]] | None = None) -> None:
        """Take the owned shards and each feed's saved mark (or a given start)."""
        self.shards = frozenset()
        for shard in await self.queue.owned():
            await self._take(shard, starts)

    async def _take(self, shard: int, starts: dict | None = None) -> None:
        """Start delivering ``shard``: each feed from its saved mark (or a given start)."""
        self._epochs[shard] = self.queue.epoch(shard)
        saved = await self.queue.load_marks(shard)
        self._saved[shard] = dict(saved)
        self._other_marks[shard] = {n: saved[n] for n in self.others if n in saved}
        self._acked[shard] = None
        for name, feed in self.feeds.items():
            start = (starts or {}).get(name, {})
            feed.start_at(shard, start[shard] if shard in start else saved.get(name))
        self.shards = self.shards | {shard}

    def _drop(self, shard: int) -> None:
        """Stop delivering ``shard``: forget its state, revoke what the engines hold of it."""
        self.shards = self.shards - {shard}
        for feed in self.feeds.values():
            for delivery in feed.engine.held():
                ticket = delivery.ticket
                if ticket.__class__ is tuple and ticket[0] == shard:
                    delivery.ticket = REVOKED
            feed.cursor.pop(shard, None)
            feed.mark.pop(shard, None)
            feed._slots.pop(shard, None)
            for key in [k for k in feed._open if k[0] == shard]:
                del feed._open[key]
        for table in (self._acked, self._saved, self._other_marks, self._epochs):
            table.pop(shard, None)

    async def refresh(self) -> None:
        """Shared queue: take the shards this process gained, drop the ones it lost."""
        owned = await self.queue.owned()
        renewed = {s for s in self.shards & owned if self.queue.epoch(s) != self._epochs.get(s)}
        lost = (self.shards - owned) | renewed
        for shard in sorted(lost):
            self._drop(shard)
            await self.queue.let_go(shard)
        if lost:
            log.info("stopped delivering shard%s %s (now another worker's)",
                     "s" if len(lost) > 1 else "", ", ".join(map(str, sorted(lost))))
        gained = sorted(owned - self.shards)
        for shard in gained:
            await self._take(shard)
        if gained:
            log.info("delivering shard%s %s of %s", "s" if len(gained) > 1 else "",
                     ", ".join(map(str, gained)), getattr(self.queue, "location", "the queue"))

    def _current(self, shard: int) -> bool:
        """Whether ``shard`` is still delivered by this process, in the same ownership."""
        return shard in self.shards and self.queue.epoch(shard) == self._epochs.get(shard)

    def _revoked(self, delivery: Delivery) -> bool:
        """The engines' check before each send (shared queue)."""
        ticket = delivery.ticket
        if ticket is REVOKED:
            return True
        if ticket.__class__ is not tuple:
            return False
        shard = ticket[0]
        return not (self.queue.holds(shard) and self._current(shard))

    def start(self) -> None:
        """Start every feed and the acknowledgements (once)."""
        if self._acker is not None:
            return
        for feed in self.feeds.values():
            if self.queue.shared:
                feed.engine.revoked = self._revoked
            feed.task = asyncio.ensure_future(self._run(feed))
        self._acker = asyncio.ensure_future(self._ack_loop())

    def add_feed(self, name: str, engine: DeliveryEngine) -> Feed:
        """A config reload added output ``name``: it reads each shard from where the
        furthest feed has read (it takes what no output had read before the reload),
        the entries before counting as settled for it."""
        feed = Feed(name, engine)
        for shard in self.shards:
            read: list[Pos] = [c for f in self.feeds.values()
                               if (c := f.cursor.get(shard)) is not None]
            feed.start_at(shard, max(read) if read else None)
        self.feeds[name] = feed
        if self._acker is not None:  # started: so is this feed
            if self.queue.shared:
                engine.revoked = self._revoked
            feed.task = asyncio.ensure_future(self._run(feed))
        return feed

    def drop_feed(self, name: str, engine: DeliveryEngine) -> None:
        """A config reload removed output ``name`` and its engine has settled what it
        took: its mark no longer holds back the acknowledgement."""
        feed = self.feeds.get(name)
        if feed is not None and feed.engine is engine:
            del self.feeds[name]
            self._moved.set()

    def settled(self, batch: list[Delivery]) -> None:
        """Engine callback: these deliveries are delivered or dead-lettered."""
        for delivery in batch:
            ticket = delivery.ticket
            if ticket is not None and ticket.__class__ is tuple:
                feed = self.feeds.get(delivery.output)
                if feed is not None:
                    feed.settle(*ticket)
        self._moved.set()

    # -- the feeds --------------------------------------------------------------------

    async def _run(self, feed: Feed) -> None:
        try:
            while not self._stopping and not feed.engine.closed:
                try:
                    progressed = False
                    ended = self._input_ended.is_set()  # looked at before reading: no race
                    # lost meanwhile, or taken anew: refresh() sorts those out
                    shards = [s for s in sorted(self.shards) if self._current(s)]
                    got = await self.queue.read_many([(s, feed.cursor[s]) for s in shards],
                                                     READ_BATCH)
                    for shard in shards:
                        entries = got.get(shard)
                        if not entries:
                            continue
                        progressed = True
                        for entry in entries:
                            if self._stopping:
                                return
                            if not self._current(shard):
                                break
                            waiting = self._one(feed, entry)
                            if waiting is None:
                                continue
                            # the engine's queue is full: wait for room (the only await
                            # per entry, and only then)
                            await feed.engine.submit(waiting)
                            if self.queue.shared and not self._current(shard):
                                # the shard was lost while the engine made room: not this
                                # process's to send (no await between submit's return and
                                # this: no engine worker saw it yet)
                                waiting.ticket = REVOKED
                    if not progressed:
                        if ended:
                            return
                        await self.queue.wait(IDLE_WAIT)
                    self._reachable()
                except QueueUnavailable as exc:
                    self._unreachable(exc)
                    await asyncio.sleep(UNAVAILABLE_WAIT)
        except QueueError as exc:
            log.error("error: %s: %s", feed.name, exc)
        finally:
            feed.done = True

    def _unreachable(self, exc: QueueError) -> None:
        if self._unavailable is None:
            log.warning("%s; delivery from the queue waits for it", exc)
        self._unavailable = str(exc)

    def _reachable(self) -> None:
        if self._unavailable is not None:
            self._unavailable = None
            log.info("the queue answers again; delivery from it goes on")

    def _one(self, feed: Feed, entry: Entry) -> Delivery | None:
        """Hand one entry to ``feed``'s engine without a coroutine per entry.

        Returns the delivery when the engine's queue is full (the caller then waits in
        ``engine.submit``); None when it was taken or the entry is settled without one.
        """
        shard, pos = entry.shard, entry.pos
        feed.cursor[shard] = pos
        try:
            event = orjson.loads(entry.data)
        except orjson.JSONDecodeError:  # cannot happen for what nwpipe put; never crash on it
            log.error("error: %s: queue entry %s of shard %d is not JSON; skipped", feed.name,
                      pos, shard)
            feed.passed(shard, pos)
            return None
        source, line = split_origin(entry.origin)
        delivery = self.handle(feed, entry, event, source, line)
        if delivery is None:
            feed.passed(shard, pos)
            self._moved.set()
            return None
        delivery.ticket = (shard, pos)
        feed.taken(shard, pos)
        # no await since the caller checked the shard is current: offering keeps it so
        return None if feed.engine.offer(delivery) else delivery

    # -- acknowledgements ---------------------------------------------------------------

    async def _ack_loop(self) -> None:
        shared = self.queue.shared
        while True:
            if shared:  # also when nothing moves: shards come and go
                await wait_event(self._moved, OWNERSHIP_INTERVAL)
            else:
                await self._moved.wait()
            self._moved.clear()
            try:
                if shared and not self._stopping:
                    await self.refresh()
                await self.ack()
                self._reachable()
            except QueueUnavailable as exc:
                self._unreachable(exc)
            except QueueError as exc:
                log.error("error: %s", exc)
            if shared:
                await asyncio.sleep(SHARED_ACK_SPACING)

    async def ack(self) -> None:
        """Remove what every output settled; save the marks that moved."""
        flushed = False
        for shard in self.shards:
            if not self._current(shard):
                continue
            marks = {name: feed.mark[shard] for name, feed in self.feeds.items()}
            known = {n: m for n, m in marks.items() if m is not None}
            if known != {n: self._saved[shard].get(n) for n in known}:
                if not flushed:
                    self.flush()  # a mark may cover a dead letter: on disk first
                    flushed = True
                await self.queue.save_marks(shard, known)
                self._saved[shard].update(known)
            if self.others - set(self._other_marks[shard]):
                continue  # an output without a feed here never settled this shard
            if not marks or len(known) < len(marks):
                continue  # an output has settled nothing of this shard yet
            upto = min([*known.values(), *self._other_marks[shard].values()])
            acked = self._acked[shard]
            if acked is None or upto > acked:
                if not flushed:
                    self.flush()
                    flushed = True
                await self.queue.ack(shard, upto)
                self._acked[shard] = upto
                self._room.set()

    async def wait_for_room(self, timeout: float) -> None:
        """Until an acknowledgement removed entries, or ``timeout`` seconds."""
        self._room.clear()
        await wait_event(self._room, timeout)

    # -- the end ----------------------------------------------------------------------

    def input_ended(self) -> None:
        """No more puts: each feed stops once it has read its shards to the end."""
        self._input_ended.set()

    async def feeds_done(self, names=None) -> None:
        """Wait until the feeds (all, or ``names``) have read and handed over everything."""
        tasks = [f.task for n, f in self.feeds.items()
                 if f.task is not None and (names is None or n in names)]
        if tasks:
            await asyncio.wait(tasks)

    def stopping(self) -> None:
        """Hand nothing more to the engines (a signal): feeds end at the next entry."""
        self._stopping = True

    async def stop_feed(self, name: str) -> None:
        """Stop one output's feed now; what it did not hand over stays in the queue."""
        feed = self.feeds[name]
        if feed.task is not None and not feed.task.done():
            await cancel_and_wait((feed.task,))
        feed.done = True

    async def stop_feeds(self) -> None:
        """Stop every feed now."""
        for name in list(self.feeds):  # a config reload may drop one meanwhile
            if name in self.feeds:
                await self.stop_feed(name)

    async def stop(self) -> None:
        """Stop reading (entries not handed over stay in the queue); final acknowledgement."""
        self._stopping = True
        await self.stop_feeds()
        if self._acker is not None:
            self._acker.cancel()
            await asyncio.gather(self._acker, return_exceptions=True)
            self._acker = None
        await self.ack()
