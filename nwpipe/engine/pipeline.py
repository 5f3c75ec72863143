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
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable

from nwpipe.config import Config
from nwpipe.engine.deadletter import DeadLetterFile, event_record, raw_record
from nwpipe.engine.delivery import DeliveryEngine, OutputStats
from nwpipe.errors import NwpipeError
from nwpipe.outputs import Delivery
from nwpipe.outputs import delivery_id as make_delivery_id
from nwpipe.sources.base import Source
from nwpipe.sources.decode import Event, Reject
from nwpipe.transform.route_map import MapFailed, map_for, route_and_map
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
    text = f"{name}: {stats.delivered} delivered"
    if stats.retried:
        text += f", {stats.retried} retried"
    if stats.dead_lettered:
        text += f", {stats.dead_lettered} dead-lettered"
    if stats.not_sent:
        text += f", {stats.not_sent} not sent (the output was closed)"
    if seconds >= RATE_MIN_SECONDS and stats.delivered:
        text += f" ({stats.delivered / seconds:,.0f}/s)"
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

    @property
    def exit_code(self) -> int:
        if self.dead_letters_on_stderr and self.signal is None:
            return EXIT_DEAD_LETTERS_ON_STDERR
        return exit_code_for(self.signal, self.dead_lettered or self.rejected or self.unreadable)

    def summary(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        parts = [f"read {self.read} event{'s' if self.read != 1 else ''}",
                 f"rejected {self.rejected}"]
        if self.map_failed:
            parts.append(f"mapping failed {self.map_failed}")
        if self.unreadable:
            parts.append(f"{self.unreadable} input{'s' if self.unreadable != 1 else ''} "
                         "not read to the end")
        parts.extend(output_summary(name, stats, self.seconds)
                     for name, stats in self.outputs.items())
        line = "; ".join(parts) + f" ({self.seconds:.2f} s, {rate:,.0f} events/s)"
        if self.dead_letters_on_stderr:
            written = self.dead_lettered - self.dead_letters_on_stderr
            line += (f"; {self.dead_letters_on_stderr} dead letter"
                     f"{'s' if self.dead_letters_on_stderr != 1 else ''} could not be written "
                     f"to {self.dead_letter_path} ({self.dead_letter_error}) and "
                     f"{'are' if self.dead_letters_on_stderr != 1 else 'is'} printed on "
                     f"stderr above; {written} written there")
        elif self.dead_lettered:
            line += f"; dead letters in {self.dead_letter_path}"
        if self.signal is not None:
            line = f"interrupted by {signal.Signals(self.signal).name}: " + line
        return line


class Pipeline:
    """One run: read the inputs, route and map each event, hand it to the engines."""

    def __init__(self, config: Config, router: Router, outputs: dict, *,
                 dead_letter: DeadLetterFile, shutdown_timeout: float | None = None,
                 progress=None):
        self.config = config
        self.router = router
        self.dead_letter = dead_letter
        self.shutdown_timeout = (config.shutdown_timeout if shutdown_timeout is None
                                 else shutdown_timeout)
        self.progress = progress
        self.result = RunResult(dead_letter_path=str(dead_letter.path))
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
        self._reported = 0
        self._refusing: asyncio.Task | None = None
        self._deadline: asyncio.TimerHandle | None = None
        #: reloads the config on SIGHUP (:mod:`nwpipe.engine.reload`), when given
        self.reloader: Reloader | None = None
        #: engines a config reload replaced or removed, finishing what they hold
        self.retiring: dict[DeliveryEngine, asyncio.Task] = {}

    # -- control ---------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once reading should stop (a signal, or an output gone for good)."""
        return self._stop.is_set()

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

    async def _refuse_all(self, why: str) -> None:
        for engine in [*self.engines.values(), *self.retiring]:
            await engine.refuse(why)

    def retire(self, engine: DeliveryEngine, successor: DeliveryEngine | None) -> None:
        """A config reload replaced (``successor``) or removed ``engine``'s output: it
        finishes what it holds in the background, then closes."""
        self.retiring[engine] = asyncio.ensure_future(self._retire(engine, successor))

    async def _retire(self, engine: DeliveryEngine, successor: DeliveryEngine | None) -> None:
        try:
            await engine.drain(None, self._abort)
        finally:
            await engine.close()
            if successor is not None:
                successor.release_predecessor()

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
            for engine in self.engines.values():
                await engine.start()
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

    async def _handle(self, records: Iterable[Event | Reject]) -> None:
        result = self.result
        acks = self._acks
        for record in records:
            result.read += 1
            if isinstance(record, Reject):
                result.rejected += 1
                self._reject(record.source, record.line, record.reason,
                             raw_record(record.raw, source=record.source, line=record.line,
                                        reason=record.reason))
                if acks.source is not None:
                    acks.after_dead_letter(record)
                continue
            await self.route(record.data, record.source, record.line,
                             item=record if acks.source is not None else None)

    async def route(self, event: dict, source: str, line: int, *, attempts: list | None = None,
                    delivery_id: str | None = None, item: Event | None = None) -> None:
        """Send an event to every output whose filters match it.

        ``delivery_id`` and ``attempts`` carry over from a dead-letter record (replay);
        ``item`` is the source's record, acknowledged once the event is settled.
        """
        outcomes = route_and_map(event, self._routes, source, line, delivery_id=delivery_id,
                                 attempts=attempts)
        ticket = None if item is None else _Ticket(item)
        for outcome in outcomes:
            if type(outcome) is Delivery:
                if ticket is not None:
                    ticket.left += 1
                    outcome.ticket = ticket
                await self.engines[outcome.output].submit(outcome)
            elif isinstance(outcome, MapFailed):
                self._map_failed(outcome, event, source, line, delivery_id, attempts)
                if ticket is not None:
                    ticket.dead = True
            # NotRouted: no output takes it, and nothing is recorded
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
        shown = failed.reason if output is None else f"{output}: {failed.reason}"
        self._reject(source, line, shown,
                     event_record(event, stage="map", output=output, source=source, line=line,
                                  reason=failed.reason,
                                  delivery_id=delivery_id or make_delivery_id(event),
                                  attempts=attempts))

    def _reject(self, source: str, line: int, reason: str, dead_record: dict) -> None:
        self.dead_letter.write((dead_record,))
        self._reported += 1
        if self._reported <= MAX_REPORTED_REJECTS:
            log.warning("%s:%d: %s (dead-lettered)", source, line, reason)

    def _report_hidden(self) -> None:
        hidden = self._reported - MAX_REPORTED_REJECTS
        if hidden > 0:
            log.warning("... and %d more rejected event%s, all in %s", hidden,
                        "" if hidden == 1 else "s", self.dead_letter.path)


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


def build_outputs(config: Config, names: Iterable[str] | None = None) -> dict:
    """Instantiate the configured outputs (all, or ``names``); nothing is opened yet."""
    wanted = config.outputs if names is None else names
    return {name: config.outputs[name].create() for name in wanted}


def run(config: Config, router: Router, paths: list[str], *, dead_letter_path: str | None = None,
        shutdown_timeout: float | None = None, progress: bool = False,
        reloader=None) -> RunResult:
    """Run the pipeline to the end of the source (or a signal); returns what happened.

    The source is the config's ``[source]`` (default: the files source reading ``paths``
    in order, ``"-"`` or nothing for stdin). ``progress``: show a live status line on
    stderr (see :mod:`nwpipe.commands.progress`). ``reloader``: a
    :class:`nwpipe.engine.reload.Reloader`, to reload the config on SIGHUP.
    """
    # spill: records the file cannot take (disk full) are printed on stderr, never lost
    dead_letter = DeadLetterFile(dead_letter_path or config.dead_letter, spill=True)
    dead_letter.check()  # a dead-letter file that cannot be written is found before reading
    source = config.source.create(list(paths), config.max_line_bytes)
    tune_gc()
    try:
        pipeline = Pipeline(config, router, build_outputs(config), dead_letter=dead_letter,
                            shutdown_timeout=shutdown_timeout, progress=make_progress(progress))
        pipeline.reloader = reloader
        result = event_loop_run(pipeline.run(source))
    finally:
        dead_letter.close()
    result.dead_letters_on_stderr = dead_letter.spilled
    result.dead_letter_error = dead_letter.error
    return result


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
