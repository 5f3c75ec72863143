"""Wire a source, routing, mapping and delivery together for ``nwpipe run``.

Parsing, routing and mapping are synchronous functions of one event
(:func:`nwpipe.transform.route_map.route_and_map`); only delivery is asynchronous.
Every event read either reaches each of its outputs or is written to the dead-letter
file with the reason, also when the run is interrupted.

Acknowledgements: each delivery engine reports every delivery as settled (delivered, or
dead-lettered); the pipeline counts them per event and calls the source's ``ack`` once
per item it read, when all of that event's deliveries are settled and any dead-letter
record of it is on disk. A source that does not override ``ack`` costs nothing here.

Shutdown (SIGINT, SIGTERM): reading stops at once, even when it waits on a slow pipe;
what was already decoded is still routed, and what has not been handed to an output
yet is dead-lettered at once; batches in flight get ``shutdown_timeout`` seconds to
finish, and whatever is left then is dead-lettered. A second signal cuts that wait
short. The dead-letter file is complete before the exit code says "interrupted".

The durable queue (:mod:`nwpipe.queue`): in *memory mode* (the default) events go
straight from the input to the outputs' memory queues, with no disk cost. When an
output is failing and its memory queue is full, the run switches to *queue mode*: what
that output holds moves under the queue's tracking, and from then on every event read is
put in the queue and delivered from it by the feeds (:mod:`nwpipe.engine.dispatch`), so
an outage waits on disk instead of in the dead-letter file. ``--durable`` runs in queue
mode from the first event (committed before it is delivered), and so does a run that
finds a backlog left by an earlier one (delivered first, in order). In queue mode a
signal leaves what is queued in the queue for the next run instead of dead-lettering it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Sequence, cast

import orjson

from nwpipe.config import Config
from nwpipe.engine.deadletter import DeadLetterFile, event_record, raw_record
from nwpipe.engine.delivery import DeliveryEngine, OutputStats
from nwpipe.engine.dispatch import Dispatcher, Feed
from nwpipe.errors import NwpipeError
from nwpipe.numbers import count, plural, rate
from nwpipe.outputs import Delivery
from nwpipe.outputs import delivery_id as make_delivery_id
from nwpipe.queue.base import Entry, Pos, Queue, QueueError, QueueFull, shard_of
from nwpipe.sources.base import Source
from nwpipe.sources.decode import Event, Reject
from nwpipe.transform.route_map import (
    MapFailed,
    NotRouted,
    check_event,
    map_for,
    route_and_map,
    route_and_map_many,
)
from nwpipe.transform.routing import Router

if TYPE_CHECKING:  # pragma: no cover
    from nwpipe.engine.reload import Reloader

log = logging.getLogger("nwpipe")

EXIT_OK = 0
EXIT_DEAD_LETTERED = 3
#: some dead-letter records could not be written to the file and went to stderr instead
EXIT_DEAD_LETTERS_ON_STDERR = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: per-line messages shown before they are only counted
MAX_REPORTED_REJECTS = 50

#: below this run time a per-output rate says nothing and is left out of the summary
RATE_MIN_SECONDS = 1.0

#: customers named in the summary's "matched no output"
UNROUTED_NAMED = 3

#: seconds between looks at the dead-letter file while acknowledgements wait for it
ACK_RETRY = 0.05


def exit_code_for(signum: int | None, failures: int) -> int:
    """The documented exit code: a signal wins, then any failure, else 0."""
    if signum == signal.SIGINT:
        return EXIT_SIGINT
    if signum is not None:
        return EXIT_SIGTERM
    return EXIT_DEAD_LETTERED if failures else EXIT_OK


def output_summary(name: str, stats: OutputStats, seconds: float) -> str:
    """``name: 40 delivered, 3 retried, 2 dead-lettered (812/s)`` for a summary line."""
    text = f"{name}: {count(stats.delivered)} delivered"
    if stats.retried:
        text += f", {count(stats.retried)} retried"
    if stats.dead_lettered:
        text += f", {count(stats.dead_lettered)} dead-lettered"
    if stats.not_sent:
        text += f", {count(stats.not_sent)} not sent (the output was closed)"
    if stats.handed_over:
        text += (f", {count(stats.handed_over)} handed over (their shards went to another "
                 "worker)")
    if seconds >= RATE_MIN_SECONDS and stats.delivered:
        text += f" ({rate(stats.delivered / seconds)})"
    return text


@dataclass
class RunResult:
    """What a run did, for the summary line and the exit code."""

    #: input items decoded: events, and pieces of input rejected as not an event
    read: int = 0
    #: items rejected before routing (not JSON, not an object, no id/customer, ...)
    rejected: int = 0
    #: (event, output) pairs whose mapping or ``when`` failed
    map_failed: int = 0
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    seconds: float = 0.0
    signal: int | None = None
    dead_letter_path: str | None = None
    #: records written to the dead-letter file by this run
    dead_lettered: int = 0

    #: inputs that could not be read to the end (a missing file, a truncated .gz, ...)
    unreadable: int = 0
    #: dead-letter records the file could not take (disk full...): printed on stderr
    dead_letters_on_stderr: int = 0
    dead_letter_error: str | None = None
    #: events that matched no output (dead-lettered too with strict routing)
    unrouted: int = 0
    #: the first few customers of those events, with how many each
    unrouted_customers: dict[str, int] = field(default_factory=dict)
    strict_routing: bool = False

    def not_routed(self, event: dict) -> None:
        """Count an event that matched no output, and remember its customer."""
        self.unrouted += 1
        customer = str(event.get("customer"))
        if customer in self.unrouted_customers or len(self.unrouted_customers) < UNROUTED_NAMED:
            self.unrouted_customers[customer] = self.unrouted_customers.get(customer, 0) + 1

    def unrouted_summary(self) -> str:
        """``3 matched no output (customers acme-typo 2, globex 1)``."""
        named = ", ".join(f"{name} {count(n)}" for name, n in self.unrouted_customers.items())
        more = self.unrouted - sum(self.unrouted_customers.values())
        if more:
            named += f", {count(more)} of other customers"
        customers = "customer" if len(self.unrouted_customers) == 1 else "customers"
        text = f"{count(self.unrouted)} matched no output ({customers} {named})"
        if self.strict_routing:
            text += ", dead-lettered"
        return text

    #: the queue file (or URL), when the run used it
    queue: str | None = None
    #: events taken from an earlier run's backlog / put in the queue by this run
    backlog_found: int = 0
    put: int = 0
    #: events left in the queue for the next run, at the end
    left_queued: int = 0
    #: the queue is shared with other processes (Redis): its backlog is not this run's
    shared: bool = False
    #: seconds reading waited for room in the queue (queue.max_bytes reached)
    waited_for_room: float = 0.0
    #: events skipped by --resume: an earlier durable run had committed them
    resumed: int = 0

    @property
    def exit_code(self) -> int:
        if self.dead_letters_on_stderr and self.signal is None:
            return EXIT_DEAD_LETTERS_ON_STDERR
        return exit_code_for(self.signal, self.dead_lettered or self.rejected or self.unreadable)

    def summary(self) -> str:
        per_second = self.read / self.seconds if self.seconds > 0 else 0.0
        parts = [f"read {plural(self.read, 'event')}", f"rejected {count(self.rejected)}"]
        if self.resumed:
            parts.insert(0, f"skipped {count(self.resumed)} committed by an earlier run "
                            "(--resume)")
        if self.map_failed:
            parts.append(f"mapping failed {count(self.map_failed)}")
        if self.unrouted:
            parts.append(self.unrouted_summary())
        if self.unreadable:
            parts.append(f"{plural(self.unreadable, 'input')} not read to the end")
        parts.extend(output_summary(name, stats, self.seconds)
                     for name, stats in self.outputs.items())
        line = "; ".join(parts) + f" ({self.seconds:.2f} s, {rate(per_second, ' events/s')})"
        if self.queue is not None and (self.put or self.backlog_found or self.left_queued):
            disk = []
            if self.backlog_found:
                disk.append(f"{count(self.backlog_found)} from an earlier run")
            if self.put:
                disk.append(f"{count(self.put)} put by this run")
            if not self.shared:
                disk.append(f"{count(self.left_queued)} left for the next run")
            line += f"; queue {self.queue}: " + ", ".join(disk)
        if self.waited_for_room:
            line += (f"; reading waited {self.waited_for_room:.1f} s for room in the queue "
                     f"(queue.max_bytes)")
        if self.dead_letters_on_stderr:
            written = self.dead_lettered - self.dead_letters_on_stderr
            line += (f"; {count(self.dead_letters_on_stderr)} dead letter"
                     f"{'s' if self.dead_letters_on_stderr != 1 else ''} could not be written "
                     f"to {self.dead_letter_path} ({self.dead_letter_error}) and "
                     f"{'are' if self.dead_letters_on_stderr != 1 else 'is'} printed on "
                     f"stderr above; {count(written)} written there")
        elif self.dead_lettered:
            line += f"; dead letters in {self.dead_letter_path}"
        if self.signal is not None:
            line = f"interrupted by {signal.Signals(self.signal).name}: " + line
        return line


class Pipeline:
    """One run: read the inputs, route and map each event, hand it to the engines."""

    #: the command named in the warning about what stays queued (None: not warned)
    command: str | None = "run"

    def __init__(self, config: Config, router: Router, outputs: dict, *,
                 dead_letter: DeadLetterFile, shutdown_timeout: float | None = None,
                 progress=None, queue: Queue | None = None, durable: bool = False,
                 keep_queue: bool = False, resume: bool = False, refuse: str | None = None,
                 deliver: bool = True, strict_routing: bool | None = None):
        """``queue``: the durable queue (opened by the run when needed); ``durable``:
        commit every event before delivering it; ``keep_queue``: at the end, leave what
        only failing outputs hold in the queue instead of waiting for their retry
        budget; ``resume``: skip what an earlier durable run committed of each input
        file; ``refuse``: dead-letter everything with this reason instead of sending
        (``nwpipe queue drain --dead-letter``); ``deliver=False`` (``--no-deliver``):
        intake only, every event is committed to the queue and other processes
        (``nwpipe work``) deliver it; ``strict_routing``: an event that matches no output
        is dead-lettered (stage "route"), not only counted (default: the config's
        ``strict_routing``)."""
        self.config = config
        self.strict_routing = (config.strict_routing if strict_routing is None
                               else strict_routing)
        self.router = router
        self.dead_letter = dead_letter
        self.shutdown_timeout = (config.shutdown_timeout if shutdown_timeout is None
                                 else shutdown_timeout)
        self.progress = progress
        self.result = RunResult(dead_letter_path=str(dead_letter.path),
                                strict_routing=self.strict_routing)
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()
        #: the source being read (run); None when events are fed directly (replay)
        self.source: Source | None = None
        self._acks = _Acks(dead_letter)
        self.engines: dict[str, DeliveryEngine] = {}
        for name, output in outputs.items():
            self.engines[name] = DeliveryEngine(output, config.outputs[name].engine, dead_letter,
                                                on_closed=self._output_closed)
            self.result.outputs[name] = self.engines[name].stats
        self._by_name = {route.name: route for route in router.routes}
        #: the routes of the outputs this pipeline drives, in config order
        self._routes = [route for route in router.routes if route.name in self.engines]
        #: how many rejects were shown on stderr (``--workers`` shares one across processes)
        self.rejects_shown: RejectCount = RejectCount()
        self._refusing: asyncio.Task | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.queue = queue
        self.durable = durable
        self.keep_queue = keep_queue
        self.resume = resume
        self._refuse_reason = refuse
        self.deliver = deliver
        #: --no-deliver: events go to the queue only (no dispatcher in this process)
        self._intake_only = False
        #: set once the run delivers from the queue (queue mode)
        self.dispatcher: Dispatcher | None = None
        self._queue_open = False
        self._engines_started = False
        self._first_output = next(iter(self.engines), None)
        self._full_logged = False
        self._moving: dict[int, object] = {}  # original tickets of deliveries being moved
        #: the routes the chunk being handed over was mapped with (see _chunk_stale)
        self._chunk_routes = self._routes
        #: --resume: per input, the line up to which an earlier durable run committed it
        self._resume_skip: _ResumeLines | None = None
        if queue is not None:
            from nwpipe.queue import location

            self.result.queue = location(queue.settings)
            self.result.shared = queue.shared

        #: reloads the config on SIGHUP (:mod:`nwpipe.engine.reload`), when given
        self.reloader: Reloader | None = None
        #: engines a config reload replaced or removed, finishing what they hold
        self.retiring: dict[DeliveryEngine, asyncio.Task] = {}

    # -- control ---------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once reading should stop (a signal, or an output gone for good)."""
        return self._stop.is_set()

    async def stopped(self) -> None:
        """Return once reading should stop (a signal, or an output gone for good): for a
        feed that takes events until then (``nwpipe serve``)."""
        await self._stop.wait()

    def stop(self, signum: int | None = None) -> None:
        """Stop reading. With a signal, dead-letter what is not in flight yet; a second
        signal cuts the wait for the deliveries in flight short."""
        if signum is not None:
            if self.result.signal is not None:
                self._abort.set()
                return
            self.result.signal = signum
            # Nothing new goes out after a signal: what waits in the queues is
            # dead-lettered now, not sent during the shutdown deadline.
            why = f"interrupted by {signal.Signals(signum).name} before delivery"
            self._refusing = asyncio.ensure_future(self._refuse_all(why))
            # Batches in flight get shutdown_timeout seconds from now, whatever the
            # run is doing (reading, or already waiting for the last deliveries).
            self._deadline = asyncio.get_running_loop().call_later(self.shutdown_timeout,
                                                                    self._abort.set)
        if self.source is not None:
            # with a signal, a partial event in the input is reported, not dropped
            signum = self.result.signal
            self.source.stop(None if signum is None else
                             f"input cut short by {signal.Signals(signum).name}")
        if self._stop.is_set():
            return
        self._stop.set()
        if self.dispatcher is not None:
            self.dispatcher.stopping()

    async def _refuse_all(self, why: str) -> None:
        for engine in [*self.engines.values(), *self.retiring]:
            await engine.refuse(why)

    def retire(self, engine: DeliveryEngine, successor: DeliveryEngine | None) -> None:
        """A config reload replaced (``successor``) or removed ``engine``'s output: it
        finishes what it holds in the background, then closes."""
        self.retiring[engine] = asyncio.ensure_future(self._retire(engine, successor))

    async def _retire(self, engine: DeliveryEngine, successor: DeliveryEngine | None) -> None:
        # a removed output's feed (queue mode) reads nothing more for it
        dispatcher = self.dispatcher if successor is None else None
        try:
            if dispatcher is not None and engine.name in dispatcher.feeds:
                await dispatcher.stop_feed(engine.name)
            await engine.drain(None, self._abort)
        finally:
            await engine.close()
            if successor is not None:
                successor.release_predecessor()
            if dispatcher is not None:
                dispatcher.drop_feed(engine.name, engine)

    def _output_closed(self, reason: str) -> None:
        log.debug("%s; stopping", reason)
        self.stop()

    # -- the run ---------------------------------------------------------------

    async def run(self, source: Source) -> RunResult:
        """Read ``source`` to its end (or a stop) and deliver what it produces; the
        source is opened first and closed after its last acknowledgement."""
        self.source = source
        if type(source).ack is not Source.ack:
            # only a source that confirms pays for the counting
            self._acks.source = source
            for engine in self.engines.values():
                engine.on_settled = self._acks.settled
        try:
            await source.open()
        except NwpipeError:
            raise
        except Exception as exc:  # a plugin's bug is one clear line, not a traceback
            raise NwpipeError(f"source: cannot start: {type(exc).__name__}: {exc}") from None

        async def read_all() -> None:
            failed = 0
            try:
                async for batch in source.read():
                    await self._handle(batch)
                    # Let the outputs work on this batch's deliveries now: a regular file
                    # is read without ever waiting, and running far ahead of the outputs
                    # only fills their queues with events that are cold in the CPU cache
                    # by the time they are sent (slower, and memory grows with queue_size).
                    await asyncio.sleep(0)
            except NwpipeError as exc:
                failed = 1  # what was read goes on to the outputs
                log.error("error: %s", exc)
            except Exception as exc:  # a source plugin's bug: one line, not a traceback
                failed = 1
                log.error("error: source %s stopped: %s: %s", source.describe(),
                          type(exc).__name__, exc)
            finally:
                self.result.unreadable = source.unreadable + failed
        try:
            return await self.execute(read_all)
        finally:
            await source.close()

    async def execute(self, feed: Callable[[], Awaitable[None]]) -> RunResult:
        """Start the outputs, run ``feed`` (which hands events to the pipeline), then
        deliver or dead-letter everything it handed over, and close the outputs.

        SIGINT and SIGTERM are handled for the whole time (see the module docstring).
        """
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self.stop, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        reloading = False
        try:
            await self._open_queue()
            for engine in self.engines.values():
                await engine.start()
                if self._refuse_reason is not None:
                    await engine.refuse(self._refuse_reason)
            self._engines_started = True
            if self.dispatcher is not None:
                self.dispatcher.start()
            # SIGHUP reloads once the outputs run (one that came earlier is done now)
            reloading = self.reloader is not None and self.reloader.install(self, loop)
            if self.progress is not None:
                self.progress.start(self)
            try:
                await feed()
            except BaseException as exc:
                # Stopped by something unforeseen: what was read is still accounted for.
                for engine in [*self.engines.values(), *self.retiring]:
                    await engine.abandon(f"not delivered: nwpipe stopped on "
                                         f"{type(exc).__name__}: {exc}")
                raise
            if self.reloader is not None:
                await self.reloader.close()  # the outputs are final from here on
            await self._input_ended()
            if self._refusing is not None:
                await self._refusing
            # Without a signal this waits for every delivery (retries included); after
            # one, _abort is set at the deadline and drain dead-letters the rest.
            await asyncio.gather(*(e.drain(None, self._abort) for e in self.engines.values()),
                                 *self.retiring.values())
        finally:
            if self.progress is not None:
                await self.progress.stop()
            if self.reloader is not None:
                await self.reloader.close()
            for task in self.retiring.values():
                task.cancel()  # only when stopped by something unforeseen: closes the output
            await asyncio.gather(*self.retiring.values(), return_exceptions=True)
            try:
                await self._close_queue()
            finally:
                for engine in self.engines.values():
                    await engine.close()
            if self._refusing is not None:
                await self._refusing
            if self._deadline is not None:
                self._deadline.cancel()
            # Written while the signal handlers are still ours: a late Ctrl-C cannot
            # interrupt the last records on their way to disk.
            self.dead_letter.flush()
            self._acks.release()
            for signum in installed:
                loop.remove_signal_handler(signum)
            if reloading and self.reloader is not None:
                self.reloader.uninstall(loop)
            self.result.seconds = time.perf_counter() - started
            self.result.dead_lettered = self.dead_letter.count
            self._report_hidden()
        return self.result

    async def work(self) -> RunResult:
        """``nwpipe work``: deliver from the queue until a signal (no input of its own)."""

        async def until_stopped() -> None:
            await self._stop.wait()

        return await self.execute(until_stopped)

    async def _handle(self, records: Sequence[Event | Reject]) -> None:
        result = self.result
        acks = self._acks
        skip = self._resume_skip
        if (skip is None and acks.source is None and self.dispatcher is None
                and not self._intake_only):
            await self._handle_chunk(records)
            return
        queued: list[Event] = []  # queue mode: put together, one commit
        for record in records:
            if skip is not None and record.line <= skip[record.source]:
                result.resumed += 1  # --resume: committed by an earlier durable run
                if acks.source is not None:
                    acks._ack(record)
                continue
            result.read += 1
            if isinstance(record, Reject):
                result.rejected += 1
                self._reject(record.source, record.line, record.reason,
                             raw_record(record.raw, source=record.source, line=record.line,
                                        reason=record.reason))
                if acks.source is not None:
                    acks.after_dead_letter(record)
                continue
            if self.dispatcher is None and not self._intake_only:
                await self.route(record.data, record.source, record.line, item=record,
                                 spill=True)
                continue
            problem = check_event(record.data)
            if problem:
                self._map_failed(MapFailed(None, None, problem, stage="parse"), record.data,
                                 record.source, record.line, None, None)
                if acks.source is not None:
                    acks.after_dead_letter(record)
                continue
            queued.append(record)
        if queued:
            await self._put_events(queued)
        if (self.dispatcher is not None or self._intake_only) and records:
            await self._note_progress(records)

    async def _handle_chunk(self, records: Sequence[Event | Reject]) -> None:
        """The hot path (memory mode, a source that does not confirm): route and map the
        chunk at once, and hand each output its deliveries as one list, without a
        coroutine per event. Whatever is not plain (a rejected line, a failed mapping, an
        event for several outputs, a full queue) goes the general way, in input order."""
        result = self.result
        start = 0
        total = len(records)
        while start < total:
            if self._queue_mode():
                # queue mode began (an output failing with a full queue): the rest of
                # the chunk goes to the queue
                await self._handle(records[start:])
                return
            # a run of decoded events up to the next rejected piece of input
            end = start
            while end < total and records[end].__class__ is Event:
                end += 1
            if end > start:
                events = cast("Sequence[Event]", records[start:end])  # all Events, above
                self._chunk_routes = self._routes
                done = await self._hand_over(events, route_and_map_many(events, self._routes))
                result.read += done
                if start + done < end:
                    start += done
                    continue
            if end < total:
                record = records[end]
                assert isinstance(record, Reject)
                result.read += 1
                result.rejected += 1
                self._reject(record.source, record.line, record.reason,
                             raw_record(record.raw, source=record.source, line=record.line,
                                        reason=record.reason))
                end += 1
            start = end

    def _queue_mode(self) -> bool:
        """True once events go through the durable queue (see :meth:`_enter_queue_mode`)."""
        return self.dispatcher is not None or self._intake_only

    def _chunk_stale(self) -> bool:
        """While a chunk was handed over (waiting for room), queue mode began or a config
        reload swapped the outputs: the rest of it must be routed and mapped again."""
        return self._queue_mode() or self._routes is not self._chunk_routes

    async def _hand_over(self, records: Sequence[Event], mapped: list) -> int:
        """Give each engine its runs of deliveries (``mapped``: route_and_map_many's
        outcomes of ``records``). Returns how many records were handled: fewer than all
        when the chunk went stale meanwhile (see :meth:`_chunk_stale`): the caller routes
        the rest again, or queues it."""
        run: list[Delivery] = []
        output = ""
        start = 0  # the record of run[0]: a run holds consecutive records
        for index, item in enumerate(mapped):
            if item.__class__ is Delivery:
                if item.output == output:
                    run.append(item)
                    continue
                if run:
                    done = await self._offer_run(output, run)
                    if done < len(run):
                        return start + done
                run = [item]
                output = item.output
                start = index
                continue
            # not one plain delivery: what came before goes first (a failed mapping
            # marks its alert dead for the later events of the chunk)
            if run:
                done = await self._offer_run(output, run)
                if done < len(run):
                    return start + done
                run = []
                output = ""
            if self._chunk_stale():
                return index
            record = records[index]
            await self._take(item, record.data, record.source, record.line, None, None, None,
                             True)
        if run:
            done = await self._offer_run(output, run)
            if done < len(run):
                return start + done
        return len(mapped)

    async def _offer_run(self, output: str, run: list[Delivery]) -> int:
        """Hand ``run`` to ``output``'s engine; how many it took before the chunk went
        stale (every await below may let a reload or queue mode in)."""
        if self._chunk_stale():
            return 0
        engine = self.engines[output]
        taken = engine.offer_many(run)
        for index in range(taken, len(run)):  # the queue is full: wait for room, or spill
            if self._chunk_stale():
                return index
            delivery = run[index]
            await self._take([delivery], delivery.event, delivery.source, delivery.line,
                             None, None, None, True)
        return len(run)

    async def route(self, event: dict, source: str, line: int, *, attempts: list | None = None,
                    delivery_id: str | None = None, item: Event | None = None,
                    spill: bool = False) -> None:
        """Send an event to every output whose filters match it.

        ``delivery_id`` and ``attempts`` carry over from a dead-letter record (replay);
        ``item`` is the source's record, acknowledged once the event is settled.
        ``spill``: when an output is failing with a full memory queue, switch to queue
        mode (the event and what follows wait on disk) instead of waiting for it.
        """
        outcomes = route_and_map(event, self._routes, source, line, delivery_id=delivery_id,
                                 attempts=attempts)
        await self._take(outcomes, event, source, line, attempts, delivery_id, item, spill)

    async def _take(self, outcomes: list, event: dict, source: str, line: int,
                    attempts: list | None, delivery_id: str | None, item: Event | None,
                    spill: bool) -> None:
        """Hand an event's outcomes to the engines (see :meth:`route`)."""
        ticket = None if item is None else _Ticket(item)
        spill = spill and self.queue is not None
        took: list[str] = []  # outputs that have this event already (taken, or recorded)
        for outcome in outcomes:
            if type(outcome) is Delivery:
                if ticket is not None:
                    ticket.left += 1
                    outcome.ticket = ticket
                engine = self.engines[outcome.output]
                if not await engine.submit(outcome, spill=spill):
                    if ticket is not None:
                        ticket.left -= 1
                        outcome.ticket = None
                    if await self._spill(event, source, line, took):
                        break  # the event waits in the queue for the others
                    spill = False
                    if ticket is not None:
                        ticket.left += 1
                        outcome.ticket = ticket
                    await engine.submit(outcome)  # no queue to wait on: wait for room
            elif isinstance(outcome, MapFailed):
                self._map_failed(outcome, event, source, line, delivery_id, attempts)
                if ticket is not None:
                    ticket.dead = True
            elif isinstance(outcome, NotRouted):
                if self._not_routed(outcome, event, source, line, delivery_id, attempts) \
                        and ticket is not None:
                    ticket.dead = True
            if outcome.output is not None:
                took.append(outcome.output)
        if ticket is not None:
            self._acks.settle(ticket, False)  # the hold taken while submitting

    async def send_to(self, output: str, event: dict, source: str, line: int, *,
                      delivery_id: str | None = None, attempts: list | None = None) -> None:
        """Map an event for one output and send it there, without its filters (replay)."""
        outcome = map_for(self._by_name[output], event, source, line, delivery_id=delivery_id,
                          attempts=attempts)
        if isinstance(outcome, MapFailed):
            self._map_failed(outcome, event, source, line, delivery_id, attempts)
        else:
            await self.engines[output].submit(outcome)

    def _not_routed(self, outcome: NotRouted, event: dict, source: str, line: int,
                    delivery_id: str | None, attempts: list | None) -> bool:
        """Count an event that matched no output; with strict routing dead-letter it
        (stage "route") and return True."""
        self.result.not_routed(event)
        if not self.strict_routing:
            return False
        reason = f"matched no output: {outcome.reason}"
        self._reject(source, line, reason,
                     event_record(event, stage="route", output=None, source=source, line=line,
                                  reason=reason, delivery_id=delivery_id, attempts=attempts))
        return True

    def _map_failed(self, failed: MapFailed, event: dict, source: str, line: int,
                    delivery_id: str | None, attempts: list | None) -> None:
        """Dead-letter an event (or its delivery to one output) that cannot be mapped."""
        if failed.stage == "parse":
            self.result.rejected += 1
            self._reject(source, line, failed.reason,
                         event_record(event, stage="parse", output=None, source=source,
                                      line=line, reason=failed.reason))
            return
        self.result.map_failed += 1
        output = None if failed.whole_event else failed.output
        engine = self.engines.get(output) if output is not None else None
        if engine is not None:
            # the alert's later events for this output follow it into the dead-letter file
            engine.mark_dead(alert_key(event))
        shown = failed.reason if output is None else f"{output}: {failed.reason}"
        self._reject(source, line, shown,
                     event_record(event, stage="map", output=output, source=source, line=line,
                                  reason=failed.reason,
                                  delivery_id=delivery_id or make_delivery_id(event),
                                  attempts=attempts))

    # -- the durable queue ---------------------------------------------------------

    @property
    def _queue(self) -> Queue:
        """The queue, where the run has one (every caller below checked that)."""
        assert self.queue is not None
        return self.queue

    async def _open_queue(self) -> None:
        """Open the queue when the run needs it now: --durable, or a backlog left by an
        earlier run (which is then delivered first). Otherwise it opens on the first
        spill, so a run that never needs it leaves no file behind."""
        if self.queue is None:
            return
        queue = self.queue
        exists = queue.settings.url is not None or os.path.exists(queue.settings.path)
        if self.resume and not exists:
            raise QueueError(f"--resume: queue file {queue.settings.path} does not exist, and "
                             f"it held where reading had reached (deleted, or another folder?); "
                             f"run without --resume to read the inputs from the start")
        if not (self.durable or exists):
            return
        await self._ensure_open()
        status = await queue.status()
        if status.depth and not queue.shared:
            self.result.backlog_found = status.depth
            log.info("queue %s holds %d event%s left by an earlier run: delivering %s first",
                     self.result.queue, status.depth, "" if status.depth == 1 else "s",
                     "it" if status.depth == 1 else "them")
        if getattr(self.source, "takes_inputs", False):
            lines = {key[len("input:"):]: value for key, value in status.notes.items()
                     if key.startswith("input:")}
            if lines or self.resume:
                self._resume_skip = _ResumeLines(lines, self.resume)
        if self.durable or status.depth or self._refuse_reason is not None:
            await self._enter_queue_mode()

    async def queue_status(self):
        """The queue's :class:`~nwpipe.queue.QueueStatus` for metrics, or ``None`` while
        the run has no open queue (in memory, or not yet opened)."""
        if self.queue is None or not self._queue_open:
            return None
        return await self.queue.status()

    async def _ensure_open(self) -> None:
        if not self._queue_open:
            await self._queue.open()
            self._queue_open = True

    async def _close_queue(self) -> None:
        if self.dispatcher is not None:
            try:
                await self.dispatcher.stop()
                if not self._queue.shared:  # a shared queue's backlog is the fleet's
                    status = await self._queue.status()
                    self.result.left_queued = status.depth
                    await self._save_failing()
            except QueueError as exc:
                log.error("error: %s", exc)
        if self._queue_open:
            self._queue_open = False
            await self._queue.close()
        if self.result.left_queued and self.command:  # serve says it in its closing line
            log.warning("%d event%s wait in the queue %s: the next `nwpipe %s` with it delivers "
                        "them first (`nwpipe queue status` shows them)", self.result.left_queued,
                        "" if self.result.left_queued == 1 else "s", self.result.queue,
                        self.command)

    async def _save_failing(self) -> None:
        """Notes for `nwpipe queue status`: since when each output is failing."""
        notes = await self._queue.notes()
        for name, engine in self.engines.items():
            key = f"failing:{name}"
            if engine.failing_since is not None:
                if key not in notes:
                    await self._queue.set_note(key, f"{engine.failing_since:.3f}")
            elif key in notes:
                await self._queue.set_note(key, None)

    async def _spill(self, event: dict, source: str, line: int, took: list[str]) -> bool:
        """An output is failing with a full memory queue: switch to queue mode. ``event``
        is put in the queue for the outputs that did not take it yet (``took`` did).
        False when the queue cannot be used: the caller waits for the output instead."""
        full = [name for name, engine in self.engines.items() if engine.full_and_failing]
        try:
            await self._ensure_open()
        except QueueError as exc:
            # no disk to wait on: the run waits for the failing output instead
            log.error("error: %s; reading waits for %s instead", exc, ", ".join(full))
            self.queue = None
            return False
        for name in full:
            log.warning("%s: failing, with its memory queue full (queue_size %d): from now on "
                        "events wait in the queue %s and are delivered from it", name,
                        self.engines[name].settings.queue_size, self.result.queue)
        await self._enter_queue_mode(full, (event, source, line, frozenset(took)))
        return True

    async def _enter_queue_mode(self, move: Sequence[str] = (),
                                then: tuple[dict, str, int, frozenset[str]] | None = None) -> None:
        """Deliver from the queue from now on.

        What the engines of ``move`` hold in memory is put in the queue first and stays
        with them, tracked by position (their feeds start after it; the other outputs
        pass over it). ``then`` is an event to put after it, which the outputs it names
        already took in memory.
        """
        if not self.deliver:
            self._intake_only = True  # commit only: other processes deliver
            return
        for engine in self.engines.values():
            # a shutdown leaves queued events in the queue (but `queue drain
            # --dead-letter` is there to move them to the dead-letter file)
            engine.keep_queued = self._refuse_reason is None
            engine.on_settled = self._settled
        moved = [(name, d) for name in move for d in self.engines[name].held()]
        for _name, d in moved:
            # settled while the put runs: _settled notes it (and acknowledges the source)
            self._moving[id(d)] = d.ticket
            d.ticket = _MOVING
        items = [(d.key, orjson.dumps(d.event), f"{d.source}:{d.line}") for _n, d in moved]
        positions = (await self._put(items, force=True) or []) if items else []
        for _name, d in moved:
            # on disk now: as far as the source is concerned, this delivery is done
            origin = self._moving.pop(id(d), None)
            if origin.__class__ is _Ticket:
                self._acks.settle(origin, False)
        event_pos: Pos | None = None
        if then is not None:
            event, source, line, _took = then
            put = await self._put([(event["id"], orjson.dumps(event), f"{source}:{line}")],
                                  force=True)
            event_pos = put[0] if put else None
        queue = self._queue
        names = set(self.engines)
        others = frozenset(self.config.outputs) - names
        self.dispatcher = dispatcher = Dispatcher(queue, self.engines, handle=self._feed_event,
                                                  flush=self.dead_letter.flush, others=others)
        await dispatcher.load()
        # every moved entry: its own output tracks it, the others pass over it
        placed = sorted(((shard_of(d.key, queue.shards), pos), name, d)
                        for (name, d), pos in zip(moved, positions))
        for (shard, pos), name, d in placed:
            for feed in dispatcher.feeds.values():
                if feed.name == name and d.ticket is not _SETTLED:
                    d.ticket = (shard, pos)
                    feed.taken(shard, pos)
                else:
                    feed.passed(shard, pos)
                feed.cursor[shard] = pos
        if then is not None and event_pos is not None:
            shard = shard_of(then[0]["id"], queue.shards)
            for name in then[3]:
                feed = dispatcher.feeds[name]
                feed.passed(shard, event_pos)
                feed.cursor[shard] = event_pos
        if self._engines_started:
            dispatcher.start()  # else execute() starts it once the engines run

    def _settled(self, batch: list[Delivery], dead: bool) -> None:
        """Queue mode's engine callback: queued deliveries advance their output's mark;
        those read before queue mode acknowledge the source as before."""
        acks = self._acks
        for delivery in batch:
            ticket = delivery.ticket
            if ticket is _MOVING:
                delivery.ticket = _SETTLED
                ticket = self._moving.pop(id(delivery), None)
            if ticket.__class__ is _Ticket:
                acks.settle(ticket, dead)
        if self.dispatcher is not None:
            self.dispatcher.settled(batch)

    async def _put(self, items: list[tuple[str, bytes, str]],
                   force: bool = False) -> list[Pos] | None:
        """Put events in the queue; while it is full (queue.max_bytes), reading waits.

        A stop (a signal) while waiting dead-letters what could not be put, unless
        ``force`` (what is put there is already held by an engine).
        """
        while True:
            try:
                positions = await self._queue.put(items)
            except QueueFull as exc:
                if self._stop.is_set() and not force:
                    why = "not queued: the queue was full when nwpipe was stopped"
                    for _alert, data, origin in items:
                        source, _sep, line = origin.rpartition(":")
                        self._reject(source, int(line), why, event_record(
                            orjson.loads(data), stage="deliver", output=None, source=source,
                            line=int(line), reason=why))
                    return None
                if not self._full_logged:
                    self._full_logged = True
                    log.warning("%s: reading waits until deliveries make room", exc)
                started = time.perf_counter()
                if self.dispatcher is not None:
                    await self.dispatcher.wait_for_room(1.0)
                else:
                    await asyncio.sleep(0.5)
                self.result.waited_for_room += time.perf_counter() - started
                continue
            self.result.put += len(items)
            return positions

    async def _put_events(self, records: list[Event]) -> None:
        """Queue mode: commit events to the queue; each is then done for the source."""
        items = [(r.data["id"], orjson.dumps(r.data), f"{r.source}:{r.line}") for r in records]
        positions = await self._put(items)
        acks = self._acks
        if positions is None:  # stopped while the queue was full: dead-lettered instead
            if acks.source is not None:
                for record in records:
                    acks.after_dead_letter(record)
            return
        if acks.source is not None:
            for record in records:
                acks._ack(record)

    async def _note_progress(self, records: Sequence[Event | Reject]) -> None:
        """Queue mode, file inputs: how far each input is committed (for --resume)."""
        if not getattr(self.source, "takes_inputs", False):
            return
        last: dict[str, int] = {}
        for record in records:
            last[record.source] = record.line
        for name, line in last.items():
            if name != "<stdin>":
                try:
                    await self._queue.set_note("input:" + os.path.abspath(name),
                                              orjson.dumps({"line": line}).decode())
                except QueueError as exc:
                    log.error("error: %s", exc)

    def _feed_event(self, feed: Feed, entry: Entry, event: dict, source: str,
                    line: int) -> Delivery | None:
        """Route and map a queued event for one output (the dispatcher's step)."""
        for outcome in route_and_map(event, self._routes, source, line):
            if isinstance(outcome, NotRouted):
                if feed.name == self._first_output:  # counted once, not once per output
                    self._not_routed(outcome, event, source, line, None, None)
                return None
            if isinstance(outcome, MapFailed) and (outcome.whole_event or outcome.output is None):
                if feed.name == self._first_output:  # one record for the event, not one each
                    self._map_failed(outcome, event, source, line, None, None)
                return None
            if outcome.output != feed.name:
                continue
            if type(outcome) is Delivery:
                return outcome
            if isinstance(outcome, MapFailed):
                self._map_failed(outcome, event, source, line, None, None)
            return None
        return None

    async def _input_ended(self) -> None:
        """The input has ended (or a stop): finish queue mode.

        Each feed reads its shards to the end. With ``keep_queue``, once only failing
        outputs hold events, they stop and their events stay in the queue; otherwise
        their retry budget decides (delivered, or dead-lettered when it is spent).
        """
        if self.keep_queue and not self._stop.is_set():
            await self._until_only_failing_hold_events()
        if self.dispatcher is None:
            return
        self.dispatcher.input_ended()
        if self._stop.is_set():
            await self.dispatcher.stop_feeds()
            return
        stopped = asyncio.ensure_future(self._stop.wait())
        feeds = asyncio.ensure_future(self.dispatcher.feeds_done())
        try:
            await asyncio.wait([stopped, feeds], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            feeds.cancel()
        await self.dispatcher.stop_feeds()

    async def _until_only_failing_hold_events(self) -> None:
        """--keep-queue: wait until every output is done or failing; then leave what the
        failing ones hold in the queue."""
        failing: list[str] = []
        while not self._stop.is_set():
            # Queue mode may start only now (an output fills up after the input ended):
            # every dispatcher must learn that no more puts come, or its feeds wait on.
            if self.dispatcher is not None:
                self.dispatcher.input_ended()
            busy = False
            failing = []
            for name, engine in self.engines.items():
                feed = self.dispatcher.feeds[name] if self.dispatcher is not None else None
                idle = engine.backlog == 0 and (feed is None or feed.done)
                if engine.failing and not idle:
                    failing.append(name)
                elif not idle:
                    busy = True
            if not busy:
                break
            await asyncio.sleep(0.1)
        if not failing or self._stop.is_set():
            return
        untracked = [n for n in failing
                     if any(d.ticket.__class__ is not tuple for d in self.engines[n].held())]
        if untracked and self.dispatcher is None and self.queue is not None:
            await self._ensure_open()
            await self._enter_queue_mode(untracked)
        for name in failing:
            engine = self.engines[name]
            if self.dispatcher is not None:
                await self.dispatcher.stop_feed(name)
            await engine.abandon("not delivered: the output was failing when the input ended "
                                 "(--keep-queue keeps only what is in the queue)")
        log.warning("--keep-queue: %s failing; what %s hold%s stays in the queue %s",
                    ", ".join(failing), "they" if len(failing) > 1 else "it",
                    "" if len(failing) > 1 else "s", self.result.queue)

    def _reject(self, source: str, line: int, reason: str, dead_record: dict) -> None:
        self.dead_letter.write((dead_record,))
        if self.rejects_shown.add() <= MAX_REPORTED_REJECTS:
            log.warning("%s:%d: %s (dead-lettered)", source, line, reason)

    def _report_hidden(self) -> None:
        if self.rejects_shown.reports_hidden:
            report_hidden_rejects(self.rejects_shown.total(), self.dead_letter.path)


class RejectCount:
    """The rejects a run has shown on stderr: it shows the first MAX_REPORTED_REJECTS,
    then says how many more there were, once."""

    #: whether this pipeline says "... and N more" at its end (with ``--workers`` the
    #: reader says it once for every worker)
    reports_hidden = True

    def __init__(self) -> None:
        self._count = 0

    def add(self) -> int:
        """Count one more reject; return how many there are now."""
        self._count += 1
        return self._count

    def total(self) -> int:
        return self._count


def report_hidden_rejects(count: int, path: object) -> None:
    """Say how many rejects past MAX_REPORTED_REJECTS were not shown one by one."""
    hidden = count - MAX_REPORTED_REJECTS
    if hidden > 0:
        log.warning("... and %d more rejected event%s, all in %s", hidden,
                    "" if hidden == 1 else "s", path)


#: tickets of deliveries being moved under the queue's tracking (see _enter_queue_mode)
_MOVING = "moving"
_SETTLED = "settled"


class _ResumeLines(dict):
    """Per input name, the line an earlier durable run committed it up to (from the
    queue's notes); 0 unless ``resume``. Says once per input what it found."""

    def __init__(self, notes: dict[str, str], resume: bool):
        super().__init__()
        self.notes = notes
        self.resume = resume

    def __missing__(self, name: str) -> int:
        line = 0
        value = self.notes.get(os.path.abspath(name)) if name != "<stdin>" else None
        if value is not None:
            try:
                line = int(orjson.loads(value)["line"])
            except (ValueError, KeyError, TypeError):
                line = 0
        if not self.resume:
            if line:
                log.info("%s: an earlier durable run committed it up to line %d; it is read "
                         "again from the start (--resume continues after that line)", name, line)
            line = 0
        elif line:
            log.info("%s: resuming after line %d (committed by an earlier run)", name, line)
        else:
            log.warning("--resume: the queue has no record of %s; it is read from the start",
                        name)
        self[name] = line
        return line


class _Ticket:
    """One event read from the source: its deliveries not yet settled."""

    __slots__ = ("item", "left", "dead")

    def __init__(self, item: Event):
        self.item = item
        self.left = 1  # a hold while the event is being routed, so it cannot settle early
        self.dead = False


class _Acks:
    """Counts settled deliveries per event and acknowledges each event to the source
    once: at once when all were delivered, after the dead-letter file is on disk when
    any was dead-lettered (or the event itself was rejected)."""

    def __init__(self, dead_letter: DeadLetterFile):
        self.dead_letter = dead_letter
        #: the source to acknowledge to; None when nobody listens (no tickets are made)
        self.source: Source | None = None
        self._waiting: list[Event | Reject] = []
        self._ack_failed = False
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None

    def settled(self, batch: list[Delivery], dead: bool) -> None:
        """The delivery engines' report: every delivery of ``batch`` is done."""
        for delivery in batch:
            ticket = delivery.ticket
            if ticket is not None:
                self.settle(ticket, dead)

    def settle(self, ticket: _Ticket, dead: bool) -> None:
        if dead:
            ticket.dead = True
        ticket.left -= 1
        if ticket.left:
            return
        if ticket.dead:
            self.after_dead_letter(ticket.item)
        else:
            self._ack(ticket.item)

    def _ack(self, item: Event | Reject) -> None:
        if self.source is None:
            return
        try:
            self.source.ack(item)
        except Exception as exc:  # a plugin's bug must not fail the delivery it confirms
            if not self._ack_failed:
                self._ack_failed = True
                log.error("error: source %s: ack failed: %s: %s", self.source.describe(),
                          type(exc).__name__, exc)

    def after_dead_letter(self, item: Event | Reject) -> None:
        """Acknowledge ``item`` once the dead-letter records written so far are on disk."""
        self._waiting.append(item)
        if self._timer is None:
            # after the dead-letter file's own flush, which was scheduled first
            self._timer = asyncio.get_running_loop().call_soon(self._try_release)

    def _try_release(self) -> None:
        self._timer = None
        if self.dead_letter.written:
            self.release()
        else:  # a replay holds the file, or the disk is full: acknowledge nothing yet
            self._timer = asyncio.get_running_loop().call_later(ACK_RETRY, self._try_release)

    def release(self) -> None:
        """Acknowledge what waited for the dead-letter file (which is on disk now)."""
        if not self.dead_letter.written:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        for item in waiting:
            self._ack(item)


def alert_key(event: dict) -> str:
    """The ordering key of an event's deliveries (see :attr:`Delivery.key`)."""
    value = event.get("id")
    return value if isinstance(value, str) else repr(value)


def build_outputs(config: Config, names: Iterable[str] | None = None) -> dict:
    """Instantiate the configured outputs (all, or ``names``); nothing is opened yet."""
    wanted = config.outputs if names is None else names
    return {name: config.outputs[name].create() for name in wanted}


def run(config: Config, router: Router, paths: list[str], *, dead_letter_path: str | None = None,
        shutdown_timeout: float | None = None, progress: bool = False,
        queue_path: str | None = None, durable: bool = False, keep_queue: bool = False,
        resume: bool = False, deliver: bool = True,
        metrics_listen: str | None = None, strict_routing: bool | None = None,
        reloader=None) -> RunResult:
    """Run the pipeline to the end of the source (or a signal); returns what happened.

    The source is the config's ``[source]`` (default: the files source reading ``paths``
    in order, ``"-"`` or nothing for stdin). ``progress``: show a live status line on
    stderr (see :mod:`nwpipe.commands.progress`). ``queue_path`` overrides ``[queue]
    path``; ``durable`` (or ``[queue] durable``) commits every event to the queue before
    delivering it; ``keep_queue`` and ``resume``: see :class:`Pipeline`; ``deliver=False``
    (``--no-deliver``): commit every event to the queue and deliver none.
    ``metrics_listen``: ``HOST:PORT`` where /healthz, /readyz and /metrics answer meanwhile.
    ``strict_routing``: dead-letter events that match no output (default: the config's
    ``strict_routing``).
    ``reloader``: a :class:`nwpipe.engine.reload.Reloader`, to reload the config on SIGHUP.
    """
    dead_letter = make_dead_letters(config, dead_letter_path)
    dead_letter.check()  # a dead-letter file that cannot be written is found before reading
    source = config.source.create(list(paths), config.max_line_bytes)
    tune_gc()
    try:
        pipeline = Pipeline(config, router, build_outputs(config) if deliver else {},
                            dead_letter=dead_letter,
                            shutdown_timeout=shutdown_timeout, progress=make_progress(progress),
                            queue=make_queue(config, queue_path),
                            durable=durable or config.queue.durable or not deliver,
                            keep_queue=keep_queue, resume=resume, deliver=deliver,
                            strict_routing=strict_routing)
        pipeline.reloader = reloader
        if metrics_listen is None:
            result = event_loop_run(pipeline.run(source))
        else:
            result = event_loop_run(with_metrics(pipeline, source, metrics_listen))
    finally:
        dead_letter.close()
    result.dead_letters_on_stderr = dead_letter.spilled
    result.dead_letter_error = dead_letter.error
    return result


async def with_metrics(pipeline: Pipeline, source, listen: str) -> RunResult:
    """Run ``pipeline`` on ``source`` (``None``: :meth:`Pipeline.work`) with the operations
    endpoints on ``listen`` meanwhile."""
    from nwpipe.engine.metrics import Metrics
    from nwpipe.net.ops import start_ops_server

    metrics = Metrics()
    metrics.watch_pipeline(pipeline.result, pipeline.engines, pipeline.dead_letter)
    metrics.watch_queue(pipeline.queue_status, pipeline.queue)
    runner = await start_ops_server(listen, metrics)
    try:
        return await (pipeline.work() if source is None else pipeline.run(source))
    finally:
        await runner.cleanup()


def make_queue(config: Config, path: str | None = None) -> Queue:
    """The configured queue (unopened); ``path`` overrides ``[queue] path``."""
    from dataclasses import replace

    from nwpipe.queue import create_queue

    settings = config.queue if path is None else replace(config.queue, path=path)
    return create_queue(settings)


def make_dead_letters(config: Config, path: str | None = None):
    """Where dead letters go: ``path`` (``--dead-letter``) when given; with a Redis queue
    the stream ``PREFIX:dead`` that every process of the fleet shares; else the config's
    dead-letter file."""
    if path is None and config.queue.url:
        from nwpipe.queue.redisdead import RedisDeadLetters

        return RedisDeadLetters(config.queue.url, config.queue.prefix,
                                ca_file=config.queue.ca_file)
    # spill: records the file cannot take (disk full) are printed on stderr, never lost
    return DeadLetterFile(path or config.dead_letter, spill=True)


def make_progress(enabled: bool):
    """A Progress line for the pipeline when ``enabled``, else None."""
    if not enabled:
        return None
    from nwpipe.commands.progress import Progress

    return Progress(sys.stderr)


def tune_gc() -> None:
    """Make the garbage collector cheap for a stream of short-lived events."""
    # Events are short-lived containers; the default collector thresholds make Python
    # scan them over and over (about 25% of decoding time). Objects alive now (config,
    # compiled templates) are frozen out of the scans.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def event_loop_run(coro):
    """Run ``coro`` to completion on a new event loop (uvloop when installed)."""
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        return asyncio.run(coro)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    uvloop.install()  # pragma: no cover - Python 3.10
    return asyncio.run(coro)
