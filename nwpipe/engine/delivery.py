"""The delivery engine: one per output, between the pipeline and the output plugin.

It owns everything an output plugin should not have to: a bounded queue, per-alert
ordering, concurrency, batching, a rate limit, retries with capped exponential backoff
and full jitter (``Retry-After`` honoured), and the dead-letter file. The plugin only
sends once and says how it went.

Retry budget: ``retry.max_elapsed`` belongs to the output, not to each event. It
counts from when the output started failing (its first failed attempt after a
success). While it lasts, a failing batch is retried with backoff however many
attempts it takes, so an outage shorter than the budget costs no event. Once the
output has been failing for longer, what waits is dead-lettered (one log line says
so) and the output is probed with one attempt at most every ``retry.max_backoff``
seconds; the first success ends the outage. ``retry.max_attempts`` limits one
event's own failures: it gives up after that many attempts only when the output
delivered other events meanwhile (the receiver works, it refuses this one).

Order per alert survives dead letters: once an event of an alert is dead-lettered for
this output, the alert's later events for this output follow it into the dead-letter
file (reason "an earlier event of this alert was dead-lettered") instead of
overtaking it, so a replay sends them in their original order.

Ordering: deliveries with the same key (the alert ``id``) are handed to the output one
batch at a time, in input order, while different alerts go concurrently. A key that is
being sent is "busy"; its later deliveries wait in its own queue, so a retrying alert
never holds up the others. With ``concurrency = 1`` everything shares one lane, so the
output sees exactly the input order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from nwpipe.aio import cancel_and_wait
from nwpipe.config import EngineSettings
from nwpipe.engine.deadletter import DeadLetterFile, delivery_record, utc_now
from nwpipe.errors import NwpipeError
from nwpipe.outputs import Delivered, Delivery, Failed, Output, OutputClosed, Retry
from nwpipe.queue.base import wait_event

log = logging.getLogger("nwpipe")

#: the reason of the later events of an alert whose earlier event was dead-lettered
FOLLOWS_DEAD_LETTER = "an earlier event of this alert was dead-lettered"

#: dead-letter messages per output before they are only counted
MAX_WARNINGS = 20


@dataclass
class OutputStats:
    """Counters for one output, shown in the run summary."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requests: int = 0
    #: not sent because the output closed for good on purpose (the reader of stdout left)
    not_sent: int = 0
    #: not sent because another process took over their shard of a shared queue (which
    #: then delivers them)
    handed_over: int = 0


@dataclass
class _Attempt:
    number: int
    at: str
    outcome: str
    reason: str | None = None
    status: int | None = None
    after: float | None = None

    def as_dict(self) -> dict:
        d = {"attempt": self.number, "at": self.at, "outcome": self.outcome}
        if self.reason is not None:
            d["reason"] = self.reason
        if self.status is not None:
            d["status"] = self.status
        if self.after is not None:
            d["retry_after"] = self.after
        return d


def backoff_delay(attempt: int, initial: float, cap: float, rng=random.random) -> float:
    """Full jitter: a random delay in [0, min(cap, initial * 2**(attempt-1))]."""
    return rng() * min(cap, initial * (2 ** (attempt - 1)))


def retry_after_delay(after: float, initial: float) -> float:
    """The wait a ``Retry-After`` asks for, but never less than ``initial`` (the
    backoff's first step): ``Retry-After: 0`` or a date in the past (a receiver whose
    clock lags) would otherwise spend every attempt within milliseconds."""
    return max(after, initial)


def retry_after_too_long(after: float, left: float, max_elapsed: float) -> str:
    """What a dead-letter reason adds when the receiver asked to wait longer than
    ``retry.max_elapsed`` leaves."""
    return (f" (Retry-After asked for {after:g} s, more than the {max(0.0, left):.1f} s left "
            f"of retry.max_elapsed = {max_elapsed:g} s)")


class RateLimiter:
    """Spaces sends evenly: at most ``rate`` per second across all workers."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


@dataclass
class _State:
    pending: dict[str, deque] = field(default_factory=dict)
    ready: deque = field(default_factory=deque)  # keys with waiting deliveries, none in flight
    queued: int = 0           # deliveries accepted and not finished (waiting or in flight)
    failing: bool = False     # the last attempt did not deliver


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class DeliveryEngine:
    """Drive one output: accept deliveries, send them in order per alert, retry, dead-letter."""

    def __init__(self, output: Output, settings: EngineSettings, dead_letter: DeadLetterFile,
                 *, on_closed: Callable[[str], None] | None = None,
                 on_settled: Callable[[list[Delivery], bool], None] | None = None):
        """``on_settled(batch, dead_lettered)`` is called once per delivery, when it is
        delivered (False) or handed to the dead-letter file (True; the caller waits for
        the record to be on disk). A delivery the output closed on (``not_sent``) is
        never settled."""
        self.output = output
        self.name = output.name
        self.settings = settings
        self.dead_letter = dead_letter
        self.stats = OutputStats()
        self.closed = False
        self._on_closed = on_closed
        #: told of every settled delivery (see __init__); may be set before start()
        self.on_settled = on_settled
        # alerts with a dead-lettered event: their later events follow it
        self._dead_keys: set[str] = set()
        #: when the output started failing (time.time()), None while it works
        self.failing_since: float | None = None
        self._failing_at = 0.0     # the same, on the loop's clock
        self._successes = 0        # sends that delivered, to tell an event's own failures
        self._last_probe = 0.0     # loop time of the last attempt once the budget is spent
        self._spent = False        # the budget is spent: what waits is dead-lettered
        self._spent_count = 0      # dead letters when it was spent, for the recovery line
        #: deliveries that came from the durable queue are left there on a shutdown
        #: (dropped from memory, not dead-lettered): the next run delivers them
        self.keep_queued = False
        #: set when several processes share the queue: true for a delivery whose shard
        #: this process no longer holds; such a delivery is neither sent nor
        #: dead-lettered (the shard's new owner delivers it), also after a freeze
        self.revoked: Callable[[Delivery], bool] | None = None
        self._state = _State()
        # Hand-made wake-ups instead of asyncio.Queue/Condition: this is the per-event
        # path, and a bare future costs a fraction of a Condition round trip.
        self._key_waiters: deque[asyncio.Future] = deque()  # workers waiting for a key
        self._change_waiters: list[asyncio.Future] = []     # submit/drain waiting for room
        self._filling = asyncio.Lock()  # batching: one worker at a time gathers a batch
        # The batch being gathered: its lanes and the filler's wake-up. A lane in it has
        # no worker to be handed to (the filler holds it), so new events for it wake the
        # filler directly; otherwise they would wait for max_wait (a stall with one lane).
        self._fill_keys: set[str] = set()
        self._fill_waiter: asyncio.Future | None = None
        self._workers: list[asyncio.Task] = []
        self._inflight: dict[int, list[Delivery]] = {}
        self._limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
        self._refused: str | None = None
        self._quiet: dict[str, int] = {}
        self._keyed = settings.concurrency > 1
        self._warnings = 0
        # A full queue makes the reader wait until a quarter of it is free again, not
        # for every single slot: one wake-up per many deliveries instead of one each.
        self._resume_at = settings.queue_size - max(1, settings.queue_size // 4)
        self._wake = asyncio.Event()  # set when the backoff waits should end (shutdown cut short)
        self._flush = asyncio.Event()  # set when no more input comes: send partial batches now
        #: called with the seconds from a batch's first attempt to its delivery (metrics)
        self.on_delivered: Callable[[float], None] | None = None
        # A config reload hands this engine's waiting deliveries to a successor: the
        # predecessor's batches still in flight hold back the lanes they share (see
        # hand_over), parked here until it is done with them.
        self._predecessor: DeliveryEngine | None = None
        self._successor: DeliveryEngine | None = None
        self._parked: set[str] = set()

    @property
    def failing(self) -> bool:
        """True while the output's last attempt did not deliver."""
        return self._state.failing

    @property
    def backlog(self) -> int:
        """Deliveries accepted and not yet finished."""
        return self._state.queued

    async def start(self) -> None:
        """Open the output and start the workers."""
        try:
            await self.output.open()
        except OSError as exc:
            # the system's own words and the file, not "FileNotFoundError: [Errno 2] ..."
            where = f"{exc.filename}: " if exc.filename else ""
            problem = exc.strerror or f"{type(exc).__name__}: {exc}"
            raise NwpipeError(f"outputs.{self.name}: cannot start: {where}{problem}") from None
        except Exception as exc:
            raise NwpipeError(f"outputs.{self.name}: cannot start: "
                              f"{type(exc).__name__}: {exc}") from None
        for i in range(self.settings.concurrency):
            self._workers.append(asyncio.create_task(self._worker(i), name=f"{self.name}-{i}"))

    @property
    def full_and_failing(self) -> bool:
        """The memory queue is full and the output is failing: new events should wait
        on disk (the durable queue) instead of here."""
        return self._state.failing and self._state.queued >= self.settings.queue_size

    def held(self) -> list[Delivery]:
        """Every delivery taken and not settled: in flight first, then waiting, each
        alert's in its order (to move them under the durable queue's tracking)."""
        held = [d for batch in self._inflight.values() for d in batch]
        for waiting in self._state.pending.values():
            held.extend(waiting)
        return held

    def _refuse(self, deliveries: list[Delivery], reason: str, quiet: bool = True) -> None:
        """Shutdown: dead-letter ``deliveries``, except those the durable queue keeps."""
        if self.keep_queued:
            deliveries = [d for d in deliveries if d.ticket.__class__ is not tuple]
        if deliveries:
            self._dead_letter(deliveries, reason, quiet=quiet)

    def mark_dead(self, key: str) -> None:
        """An event of alert ``key`` was dead-lettered for this output before reaching
        the engine (its mapping failed): the alert's later events follow it."""
        self._dead_keys.add(key)

    async def submit(self, delivery: Delivery, *, spill: bool = False) -> bool:
        """Queue a delivery; waits while the queue is full.

        With ``spill``, a full queue of a failing output returns False at once and the
        delivery is not taken (the caller keeps it on disk); otherwise this waits for
        room, which the output's retry budget guarantees to come. Returns True once
        the delivery is taken (queued, or settled at once: dead-lettered behind an
        earlier event of its alert, or refused during a shutdown).
        """
        if self.offer(delivery):
            return True
        state = self._state
        if state.queued >= self.settings.queue_size:
            while not self.closed:
                if self._refused is not None:
                    self._refuse([delivery], self._refused)
                    return True
                if state.queued >= self.settings.queue_size:
                    if spill and state.failing:
                        return False
                elif state.failing or state.queued <= self._resume_at:
                    break
                await self._wait_change()
            if self.closed:
                return True
        self._enqueue(delivery)
        return True

    def offer(self, delivery: Delivery) -> bool:
        """Take a delivery if that needs no waiting (see :meth:`submit`), without the
        cost of a coroutine: True when taken (queued or settled at once), False when
        the queue is full (then :meth:`submit` waits, or spills)."""
        state = self._state
        if self.closed:
            self.stats.not_sent += 1
            return True
        if self._refused is not None:
            self._refuse([delivery], self._refused)
            return True
        if (self._dead_keys and delivery.key in self._dead_keys
                and (delivery.key if self._keyed else "") not in state.pending):
            # behind a dead letter, and nothing of its lane is waiting or in flight (that
            # would go first): straight to the dead-letter file
            self._dead_letter([delivery], FOLLOWS_DEAD_LETTER, quiet=True)
            return True
        if state.queued >= self.settings.queue_size:
            return False
        self._enqueue(delivery)
        return True

    def offer_many(self, deliveries: list[Delivery]) -> int:
        """:meth:`offer` for a chunk, in order: how many of ``deliveries``, from the
        front, were taken. The rest (the queue filled up) go to :meth:`submit`."""
        state = self._state
        if self.closed or self._refused is not None or self._dead_keys:
            # the rare states: one by one, as offer() decides
            taken = 0
            for delivery in deliveries:
                if not self.offer(delivery):
                    break
                taken += 1
            return taken
        room = self.settings.queue_size - state.queued
        if room <= 0:
            return 0
        if room < len(deliveries):
            deliveries = deliveries[:room]
        pending = state.pending
        keyed = self._keyed
        filler = self._fill_waiter
        fill_keys = self._fill_keys
        push_ready = self._push_ready
        ready = state.ready
        waiters = self._key_waiters
        # no predecessor to wait for (a reload): a new lane without a waiting worker
        # simply joins the ready queue, as _push_ready would put it
        plain = self._predecessor is None
        key: str = ""
        for delivery in deliveries:
            if keyed:
                # Delivery.key, inline: this runs once per event
                alert = delivery.event.get("id")
                key = alert if alert.__class__ is str else repr(alert)
            waiting = pending.get(key)
            if waiting is None:
                pending[key] = deque((delivery,))
                if plain and not waiters:
                    ready.append(key)
                else:
                    push_ready(key)
            else:
                waiting.append(delivery)
                if filler is not None and key in fill_keys and not filler.done():
                    filler.set_result(key)
        state.queued += len(deliveries)
        return len(deliveries)

    def _enqueue(self, delivery: Delivery) -> None:
        state = self._state
        state.queued += 1
        # with one worker, one lane for everything keeps the input order exactly
        key = delivery.key if self._keyed else ""
        waiting = state.pending.get(key)
        if waiting is None:
            state.pending[key] = deque((delivery,))
            self._push_ready(key)
        else:
            waiting.append(delivery)
            filler = self._fill_waiter
            if filler is not None and key in self._fill_keys and not filler.done():
                filler.set_result(key)

    # -- wake-ups --------------------------------------------------------------

    def _push_ready(self, key: str) -> None:
        """``key`` has deliveries and none in flight: give it to a waiting worker."""
        if self._predecessor is not None and self._predecessor._busy_with(key, self._keyed):
            self._parked.add(key)  # its earlier deliveries are still on the old output
            return
        waiters = self._key_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(key)
                return
        self._state.ready.append(key)

    async def _next_key(self) -> str:
        ready = self._state.ready
        while True:
            if ready:
                return ready.popleft()
            waiter = asyncio.get_running_loop().create_future()
            self._key_waiters.append(waiter)
            key = await waiter
            if key is not None:  # None: woken to look at the flush flag (drain)
                return key

    async def _wait_change(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._change_waiters.append(waiter)
        await waiter

    def _notify(self) -> None:
        """Wake every submit/drain waiting for the queue, the failing flag or shutdown."""
        waiters, self._change_waiters = self._change_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_workers(self) -> None:
        for waiter in self._key_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._key_waiters.clear()

    # -- workers ---------------------------------------------------------------

    async def _worker(self, number: int) -> None:
        state = self._state
        max_events = self.settings.batch.max_events
        while True:
            # registered before anything is taken, so a cancelled worker loses nothing
            batch: list[Delivery] = []
            if max_events > 1:
                async with self._filling:
                    key = await self._next_key()
                    self._inflight[number] = batch
                    keys = [key]
                    size = self._take(key, batch, 0)
                    if len(batch) < max_events:
                        await self._fill(batch, keys, size)
            else:
                key = await self._next_key()
                self._inflight[number] = batch
                keys = [key]
                waiting = state.pending[key]
                if waiting:  # a shutdown may have emptied it since the key was handed over
                    batch.append(waiting.popleft())
            if batch and self._dead_keys:
                batch = self._follow_dead_letters(batch, number)
            if batch:
                try:
                    await self._deliver(batch)
                except Exception as exc:  # a bug here must not strand the batch
                    log.error("%s: internal error: %s: %s", self.name, type(exc).__name__, exc)
                    self._dead_letter(batch, f"internal error while delivering: "
                                             f"{type(exc).__name__}: {exc}")
            del self._inflight[number]
            pending = state.pending
            for k in keys:
                if pending[k]:
                    self._push_ready(k)
                else:
                    del pending[k]
            state.queued -= len(batch)
            if self._change_waiters and state.queued <= self._resume_at:
                self._notify()
            if self._successor is not None:
                self._successor._unpark()

    def _follow_dead_letters(self, batch: list[Delivery], number: int) -> list[Delivery]:
        """Dead-letter the deliveries of alerts dead-lettered earlier; send the rest."""
        behind = [d for d in batch if d.key in self._dead_keys]
        if not behind:
            return batch
        keep = [d for d in batch if d.key not in self._dead_keys]
        self._dead_letter(behind, FOLLOWS_DEAD_LETTER, quiet=True)
        self._state.queued -= len(behind)
        self._inflight[number] = keep
        return keep

    def _take(self, key: str, batch: list[Delivery], size: int) -> int:
        """Move deliveries of ``key`` into ``batch`` within the batch limits."""
        policy = self.settings.batch
        waiting = self._state.pending[key]
        while waiting and len(batch) < policy.max_events:
            if policy.max_events > 1:
                first = waiting[0]
                length = len(first._json or first.body_json()) + 1
                if batch and size + length > policy.max_bytes:
                    break
                size += length
            batch.append(waiting.popleft())
        return size

    async def _fill(self, batch: list[Delivery], keys: list[str], size: int) -> int:
        """Add other ready alerts to the batch until it is full or max_wait has passed."""
        policy = self.settings.batch
        ready = self._state.ready
        pending = self._state.pending
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.max_wait
        own = self._fill_keys
        own.update(keys)
        woken_by_own = False
        try:
            while len(batch) < policy.max_events and size < policy.max_bytes:
                key = None
                if woken_by_own:
                    # events came for the batch's own lanes while it waited (one wake-up
                    # for several lanes): they go first, being older than later lanes
                    key = next((k for k in keys if pending[k]), None)
                    woken_by_own = key is not None
                if key is None and ready:
                    size, room = self._take_ready(batch, keys, size, ready, pending, policy)
                    if room:
                        continue
                    break
                if key is None:
                    if loop.time() >= deadline or self.closed or self._flush.is_set():
                        break
                    waiter = loop.create_future()
                    self._key_waiters.append(waiter)
                    self._fill_waiter = waiter
                    timer = loop.call_at(deadline, _expire, waiter)
                    try:
                        key = await waiter
                    finally:
                        timer.cancel()
                        self._fill_waiter = None
                    if key is None:  # max_wait passed, or no more input is coming
                        break
                    woken_by_own = key in own
                before = len(batch)
                size = self._take(key, batch, size)
                if len(batch) == before:
                    if key not in own:
                        # did not fit: ready again at once, not held while this batch is sent
                        self._push_ready(key)
                    break
                if key not in own:
                    own.add(key)
                    keys.append(key)
        finally:
            own.clear()
        return size

    def _take_ready(self, batch: list[Delivery], keys: list[str], size: int, ready: deque,
                    pending: dict[str, deque], policy) -> tuple[int, bool]:
        """Move the deliveries of ready alerts into ``batch``, many alerts in one loop (the
        common case on a busy output: one or two events per alert). Returns the batch's
        byte size, and whether it has room for more (False: full, or nothing fitted)."""
        max_events = policy.max_events
        max_bytes = policy.max_bytes
        own = self._fill_keys
        while ready:
            key = ready.popleft()
            waiting = pending[key]
            took = False
            while waiting and len(batch) < max_events:
                first = waiting[0]
                length = len(first._json or first.body_json()) + 1
                if batch and size + length > max_bytes:
                    break
                size += length
                batch.append(waiting.popleft())
                took = True
            if not took:
                # did not fit: ready again at once, not held while this batch is sent
                self._push_ready(key)
                return size, False
            own.add(key)
            keys.append(key)
            if len(batch) >= max_events or size >= max_bytes:
                return size, False
        return size, True

    async def _deliver(self, batch: list[Delivery]) -> None:
        retry = self.settings.retry
        loop = asyncio.get_running_loop()
        attempt = 0
        successes = self._successes
        started = loop.time()
        while True:
            if self.revoked is not None:
                batch = self._unrevoked(batch)
                if not batch:
                    return
            if self._spent:
                # The budget is spent: what waits is dead-lettered, with one probe at
                # most every max_backoff seconds to notice that the receiver is back.
                now = loop.time()
                if now - self._last_probe < retry.max_backoff:
                    self._dead_letter(batch, self._spent_reason(), quiet=True)
                    return
                self._last_probe = now
            attempt += 1
            if self._limiter is not None:
                await self._limiter.wait()
            self.stats.requests += 1
            try:
                result = await self.output.send(batch)
            except asyncio.CancelledError:
                raise
            except OutputClosed as exc:
                self.stats.not_sent += len(batch)
                self._output_closed(str(exc))
                return
            except (OSError, asyncio.TimeoutError) as exc:
                result = Retry(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a plugin bug must not kill the run
                result = Failed(f"output raised {type(exc).__name__}: {exc}")
            if isinstance(result, Delivered) and result.refused:
                batch = self._dead_letter_refused(batch, attempt, result.refused)
            if isinstance(result, Delivered):
                self._successes += 1
                if self._state.failing:
                    self._recovered(loop.time())
                self.stats.delivered += len(batch)
                if self.on_delivered is not None:
                    self.on_delivered(loop.time() - started)
                if self.on_settled is not None:
                    self.on_settled(batch, False)
                return
            if not self._state.failing:
                self._state.failing = True
                self.failing_since = time.time()
                self._failing_at = loop.time()
                # a submitter waiting for space can now spill to disk instead of waiting
                self._notify()
            if isinstance(result, Failed):
                self._record(batch, attempt, "failed", result.reason, result.status)
                self._dead_letter(batch, result.reason, result.status, result.response)
                return
            if not isinstance(result, Retry):
                result = Failed(f"output returned {result!r}, not Delivered, Retry or Failed")
                self._record(batch, attempt, "failed", result.reason)
                self._dead_letter(batch, result.reason)
                return
            failing_for = loop.time() - self._failing_at
            if result.after is not None:
                delay = retry_after_delay(result.after, retry.initial_backoff)
            else:
                delay = backoff_delay(attempt, retry.initial_backoff, retry.max_backoff)
            self._record(batch, attempt, "retry", result.reason, result.status, result.after)
            if self._spent or failing_for + delay > retry.max_elapsed:
                note = ""
                if result.after is not None and failing_for <= retry.max_elapsed:
                    note = retry_after_too_long(result.after, retry.max_elapsed - failing_for,
                                                retry.max_elapsed)
                if not self._spent:
                    self._spend(failing_for, note)
                self._last_probe = loop.time()
                why = f"{self._spent_reason()}; last attempt: {result.reason}{note}"
                self._dead_letter(batch, why, result.status, result.response,
                                  quiet=self._spent_reason())
                return
            if attempt >= retry.max_attempts and self._successes > successes:
                # the receiver delivers other events: this failure is the event's own
                why = (f"gave up after {attempt} attempts while the output delivered other "
                       f"events: {result.reason}")
                self._dead_letter(batch, why, result.status, result.response)
                return
            self.stats.retried += len(batch)
            log.debug("%s: attempt %d failed (%s); retrying in %.2f s", self.name, attempt,
                      result.reason, delay)
            if self._wake.is_set():
                # shutting down and told not to wait: stop retrying now (what came from
                # the durable queue stays there, for the next run)
                if self.keep_queued:
                    batch = [d for d in batch if d.ticket.__class__ is not tuple]
                if batch:
                    self._dead_letter(batch, f"shutdown before delivery; last attempt: "
                                      f"{result.reason}", result.status, result.response)
                return
            # not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as
            # the wake-up does (abandon() does both), and the worker would never end
            await wait_event(self._wake, delay)

    def _spend(self, failing_for: float, note: str = "") -> None:
        """The output has been failing for longer than its retry budget (``note``: why
        waiting is pointless, such as a ``Retry-After`` past the budget)."""
        self._spent = True
        self._spent_count = self.stats.dead_lettered
        retry = self.settings.retry
        log.warning("%s: failing for %.1f s, and retrying longer would pass retry.max_elapsed "
                    "(%g s)%s: what waits for it is dead-lettered from now on; one attempt every "
                    "%g s checks whether it is back", self.name, failing_for, retry.max_elapsed,
                    note, retry.max_backoff)

    def _spent_reason(self) -> str:
        return (f"output '{self.name}' failing for longer than retry.max_elapsed "
                f"({self.settings.retry.max_elapsed:g} s)")

    def _recovered(self, now: float) -> None:
        if self._spent:
            log.warning("%s: delivering again after %.0f s failing; %d event%s dead-lettered "
                        "meanwhile", self.name, now - self._failing_at,
                        self.stats.dead_lettered - self._spent_count,
                        "" if self.stats.dead_lettered - self._spent_count == 1 else "s")
        elif now - self._failing_at >= 1.0:
            log.info("%s: delivering again after %.0f s failing", self.name, now - self._failing_at)
        self._state.failing = False
        self._spent = False
        self.failing_since = None

    def _unrevoked(self, batch: list[Delivery]) -> list[Delivery]:
        """``batch`` without the deliveries of shards this process lost."""
        revoked = self.revoked
        assert revoked is not None  # only called when set
        keep = [d for d in batch if not revoked(d)]
        if len(keep) < len(batch):
            self.stats.handed_over += len(batch) - len(keep)
        return keep

    def _record(self, batch, number, outcome, reason, status=None, after=None) -> None:
        entry = _Attempt(number, utc_now(), outcome, reason, status, after).as_dict()
        for delivery in batch:
            delivery.attempts.append(entry)

    def _dead_letter(self, batch: list[Delivery], reason: str, status: int | None = None,
                     response: str | None = None, quiet: bool | str = False) -> None:
        """Write dead-letter records for ``batch``; ``quiet``: only count them (under
        ``reason``, or the given summary text) and report the count once, in drain()."""
        if self.revoked is not None:
            batch = self._unrevoked(batch)
            if not batch:
                return
        self.dead_letter.write(delivery_record(d, stage="deliver", reason=reason, status=status,
                                               response=response) for d in batch)
        self.stats.dead_lettered += len(batch)
        self._dead_keys.update(d.key for d in batch)
        if self.on_settled is not None:
            self.on_settled(batch, True)
        if quiet:
            # one by one (a shutdown, an alert behind a dead letter, a spent budget):
            # counted, and reported once by drain()
            summary = reason if quiet is True else quiet
            self._quiet[summary] = self._quiet.get(summary, 0) + len(batch)
            return
        self._warnings += 1
        if self._warnings <= MAX_WARNINGS:
            log.warning("%s: %d event%s dead-lettered: %s", self.name, len(batch),
                        "" if len(batch) == 1 else "s", reason)
            if self._warnings == MAX_WARNINGS:
                log.warning("%s: further dead letters are only counted (see %s)", self.name,
                            self.dead_letter.path)

    def _dead_letter_refused(self, batch: list[Delivery], attempt: int,
                             refused: tuple[tuple[int, str], ...]) -> list[Delivery]:
        """Dead-letter the deliveries an output refused while the rest arrived; return
        the rest."""
        by_reason: dict[str, list[Delivery]] = {}
        for index, reason in refused:
            by_reason.setdefault(reason, []).append(batch[index])
        for reason, deliveries in by_reason.items():
            self._record(deliveries, attempt, "failed", reason)
            self._dead_letter(deliveries, reason)
        gone = {index for index, _ in refused}
        return [d for i, d in enumerate(batch) if i not in gone]

    def _output_closed(self, reason: str) -> None:
        self.closed = True
        self._notify()
        if self._on_closed is not None:
            self._on_closed(reason)

    # -- shutdown --------------------------------------------------------------

    async def refuse(self, reason: str) -> None:
        """Shutdown: dead-letter with ``reason`` what is queued and not yet in flight,
        and from now on every new delivery at once. Batches in flight go on: an attempt
        under way may finish, but a temporary failure is not retried any more (the
        backoff waits end now), so a receiver that is down does not hold up the exit."""
        self._refused = reason
        self._wake.set()
        leftovers = self._take_waiting()
        if leftovers:
            self._refuse(leftovers, reason, quiet=False)
        self._notify()

    def _take_waiting(self) -> list[Delivery]:
        """Remove and return every delivery that waits (is not in flight), each alert's
        in order."""
        state = self._state
        taken: list[Delivery] = []
        # Keys in the ready queue are not being sent: they go with their deliveries.
        while state.ready:
            taken.extend(state.pending.pop(state.ready.popleft(), ()))
        # The other keys are busy in a worker, which removes them when its batch ends.
        for waiting in state.pending.values():
            taken.extend(waiting)
            waiting.clear()
        state.queued -= len(taken)
        return taken

    async def drain(self, timeout: float | None = None, abort: asyncio.Event | None = None) -> None:
        """Wait until every accepted delivery is delivered or dead-lettered.

        With ``timeout`` (seconds), what is still waiting or in flight when it expires,
        or when ``abort`` is set, is dead-lettered.
        """
        self._flush.set()
        self._wake_workers()  # a worker gathering a batch sends it now

        async def idle():
            while self._state.queued and not self.closed:
                await self._wait_change()

        waiters = [asyncio.ensure_future(idle())]
        if abort is not None:
            waiters.append(asyncio.ensure_future(abort.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if self._state.queued and not self.closed:
            await self.abandon("not delivered before the shutdown deadline")
        self.report_quiet()

    def report_quiet(self) -> None:
        """Log the dead letters that were only counted, one line per reason."""
        for reason, count in self._quiet.items():
            log.warning("%s: %d %sevent%s dead-lettered: %s", self.name, count,
                        "more " if self._warnings else "", "" if count == 1 else "s", reason)
        self._quiet.clear()

    async def abandon(self, reason: str) -> None:
        """Stop the workers now and dead-letter everything waiting or in flight (but
        what the durable queue keeps, with ``keep_queued``)."""
        self._wake.set()
        # cancelled again should one swallow the cancel: it would else wait on for
        # its next event, and so would this (and the run: a hang SIGTERM cannot end)
        await cancel_and_wait(self._workers)
        self._workers.clear()
        leftovers = [d for batch in self._inflight.values() for d in batch]
        self._inflight.clear()
        for waiting in self._state.pending.values():
            leftovers.extend(waiting)
        self._state.pending.clear()
        self._state.ready.clear()
        self._key_waiters.clear()
        self._parked.clear()
        if leftovers:
            self._refuse(leftovers, reason, quiet=False)
        self._state.queued = 0
        if self._successor is not None:
            self._successor._unpark()
        self._notify()

    async def close(self) -> None:
        """Stop the workers (after ``drain``) and close the output."""
        await cancel_and_wait(self._workers)
        self._workers.clear()
        if self.closed:
            # what the closed output still held (queued or on its way) was not sent
            self.stats.not_sent += self._state.queued
            self._state.queued = 0
        await self.output.close()

    # -- config reload: hand over to a successor ---------------------------------

    def hand_over(self, successor: DeliveryEngine) -> list[Delivery]:
        """A config reload changed this output: ``successor`` (its engine built from the
        new config, started) takes over.

        Returns the deliveries that wait here and are not in flight, each alert's in
        order, removed from this engine: the caller maps them again for the successor
        and gives them to it with :meth:`take`. The batches in flight finish here (this
        engine is then drained and closed); until they have, the successor holds back
        the alerts they belong to (every alert while either engine keeps one lane for
        all), so an alert's events still reach the receivers in order. The two engines
        share one set of counters.
        """
        moved = self._take_waiting()
        successor.stats = self.stats
        # an alert dead-lettered here: its later events follow it there too
        successor._dead_keys.update(self._dead_keys)
        successor._predecessor = self
        self._successor = successor
        self._notify()
        return moved

    def take(self, deliveries: list[Delivery]) -> None:
        """Queue ``deliveries`` handed over by a predecessor, at once and in their order
        (past ``queue_size`` if need be: they were already accepted once)."""
        for delivery in deliveries:
            self._enqueue(delivery)

    def _busy_with(self, key: str, keyed: bool) -> bool:
        """Whether this engine still holds deliveries of the lane ``key`` of a successor
        (``keyed``: whether the successor has one lane per alert)."""
        if keyed and self._keyed:
            return key in self._state.pending
        return self._state.queued > 0

    def _unpark(self) -> None:
        """The predecessor finished a batch: release the lanes it no longer holds."""
        before = self._predecessor
        if before is None or not self._parked:
            return
        self._dead_keys.update(before._dead_keys)  # a batch it just dead-lettered
        free = [key for key in self._parked if not before._busy_with(key, self._keyed)]
        for key in free:
            self._parked.discard(key)
            self._push_ready(key)

    def release_predecessor(self) -> None:
        """The predecessor is drained and closed: every lane it held back is free."""
        before, self._predecessor = self._predecessor, None
        if before is not None:
            self._dead_keys.update(before._dead_keys)
        parked, self._parked = self._parked, set()
        for key in parked:
            self._push_ready(key)
