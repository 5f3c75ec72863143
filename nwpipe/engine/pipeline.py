"""Wire sources, routing, mapping and delivery together for ``nwpipe run``.

Parsing, routing and mapping are synchronous functions of one event; only delivery is
asynchronous. Every event read either reaches each of its outputs or is written to the
dead-letter file with the reason, also when the run is interrupted.

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
from typing import Awaitable, Callable, Iterable

from nwpipe.config import Config
from nwpipe.engine.deadletter import DeadLetterFile, event_record, raw_record
from nwpipe.engine.delivery import DeliveryEngine, OutputStats
from nwpipe.errors import EventError, NwpipeError
from nwpipe.outputs import Delivery
from nwpipe.outputs import delivery_id as make_delivery_id
from nwpipe.transform.routing import Route, Router
from nwpipe.sources.decode import Decoder, Event, Reject, aiter_chunks, source_name

log = logging.getLogger("nwpipe")

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_DEAD_LETTERED = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: per-line messages shown before they are only counted
MAX_REPORTED_REJECTS = 50

#: below this run time a per-output rate says nothing and is left out of the summary
RATE_MIN_SECONDS = 1.0


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

    @property
    def exit_code(self) -> int:
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
        if self.dead_lettered:
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
        self.engines: dict[str, DeliveryEngine] = {}
        for name, output in outputs.items():
            self.engines[name] = DeliveryEngine(output, config.outputs[name].engine, dead_letter,
                                                on_closed=self._output_closed)
            self.result.outputs[name] = self.engines[name].stats
        self._routes = {route.name: route for route in router.routes}
        self._reported = 0
        self._fetch: asyncio.Future | None = None  # the read of the next input chunk
        self._fetch_cancelled = False
        self._refusing: asyncio.Task | None = None
        self._deadline: asyncio.TimerHandle | None = None

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
        if self._stop.is_set():
            return
        self._stop.set()
        # A read waiting on a slow pipe would wait for the next line: end it now.
        if self._fetch is not None and not self._fetch.done():
            self._fetch_cancelled = True
            self._fetch.cancel()

    async def _refuse_all(self, why: str) -> None:
        for engine in self.engines.values():
            await engine.refuse(why)

    def _output_closed(self, reason: str) -> None:
        log.debug("%s; stopping", reason)
        self.stop()

    # -- the run ---------------------------------------------------------------

    async def run(self, paths: list[str]) -> RunResult:
        """Read ``paths`` in order (``"-"`` is stdin) and deliver what they hold."""
        async def read_all() -> None:
            for path in paths:
                if self._stop.is_set():
                    break
                try:
                    await self._read(path)
                except NwpipeError as exc:
                    # What was read from it goes on to the outputs; so do the next inputs.
                    self.result.unreadable += 1
                    log.error("error: %s", exc)
        return await self.execute(read_all)

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
        try:
            for engine in self.engines.values():
                await engine.start()
            if self.progress is not None:
                self.progress.start(self)
            try:
                await feed()
            except BaseException as exc:
                # Stopped by something unforeseen: what was read is still accounted for.
                for engine in self.engines.values():
                    await engine.abandon(f"not delivered: nwpipe stopped on "
                                         f"{type(exc).__name__}: {exc}")
                raise
            if self._refusing is not None:
                await self._refusing
            # Without a signal this waits for every delivery (retries included); after
            # one, _abort is set at the deadline and drain dead-letters the rest.
            await asyncio.gather(*(e.drain(None, self._abort) for e in self.engines.values()))
        finally:
            if self.progress is not None:
                await self.progress.stop()
            for engine in self.engines.values():
                await engine.close()
            if self._refusing is not None:
                await self._refusing
            if self._deadline is not None:
                self._deadline.cancel()
            # Written while the signal handlers are still ours: a late Ctrl-C cannot
            # interrupt the last records on their way to disk.
            self.dead_letter.flush()
            for signum in installed:
                loop.remove_signal_handler(signum)
            self.result.seconds = time.perf_counter() - started
            self.result.dead_lettered = self.dead_letter.count
            self._report_hidden()
        return self.result

    async def _read(self, path: str) -> None:
        decoder = Decoder(source_name(path), max_line_bytes=self.config.max_line_bytes)
        chunks = aiter_chunks(path)
        try:
            while not self._stop.is_set():
                # The read runs as its own task so that stop() can cancel it alone,
                # never the routing of events already read.
                self._fetch = asyncio.ensure_future(chunks.__anext__())
                try:
                    chunk = await self._fetch
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if not self._fetch_cancelled:
                        raise
                    break
                finally:
                    self._fetch = None
                await self._handle(decoder.feed(chunk))
                # Let the outputs work on this chunk's deliveries now: a regular file is
                # read without ever waiting, and running far ahead of the outputs only
                # fills their queues with events that are cold in the CPU cache by the
                # time they are sent (slower, and memory grows with queue_size).
                await asyncio.sleep(0)
        finally:
            await chunks.aclose()
            # Stopped without a signal: the reader of an output went away (`run | head`),
            # and the rest of the input, a partial line included, is simply not read.
            if not self._stop.is_set() or self.result.signal is not None:
                # also after a read error (a truncated .gz): a partial event is reported
                rest = decoder.finish()
                if self._stop.is_set():
                    cut = f"input cut short by {signal.Signals(self.result.signal).name}"
                    rest = [Reject(r.raw, r.source, r.line, f"{cut}: {r.reason}")
                            if isinstance(r, Reject) else r for r in rest]
                await self._handle(rest)

    async def _handle(self, records: Iterable[Event | Reject]) -> None:
        result = self.result
        for record in records:
            result.read += 1
            if isinstance(record, Reject):
                result.rejected += 1
                self._reject(record.source, record.line, record.reason,
                             raw_record(record.raw, source=record.source, line=record.line,
                                        reason=record.reason))
                continue
            event = record.data
            problem = missing_fields(event)
            if problem:
                result.rejected += 1
                self._reject(record.source, record.line, problem,
                             event_record(event, stage="parse", output=None, source=record.source,
                                          line=record.line, reason=problem))
                continue
            await self.route(event, record.source, record.line)

    async def route(self, event: dict, source: str, line: int, *, attempts: list | None = None,
                    delivery_id: str | None = None) -> None:
        """Send a valid event to every output whose filters match it.

        ``delivery_id`` and ``attempts`` carry over from a dead-letter record (replay).
        """
        did = delivery_id or make_delivery_id(event)
        try:
            routes = list(self.router.route(event))
        except EventError as exc:
            self.result.map_failed += 1
            reason = f"'when' failed: {exc}"
            self._reject(source, line, reason,
                         event_record(event, stage="map", output=None, source=source, line=line,
                                      reason=reason, delivery_id=did, attempts=attempts))
            return
        for route in routes:
            if route.name in self.engines:
                await self._map_and_submit(route, event, source, line, did, attempts, True)

    async def send_to(self, output: str, event: dict, source: str, line: int, *,
                      delivery_id: str | None = None, attempts: list | None = None) -> None:
        """Map an event for one output and send it there, without its filters (replay)."""
        await self._map_and_submit(self._routes[output], event, source, line,
                                   delivery_id or make_delivery_id(event), attempts, False)

    async def _map_and_submit(self, route: Route, event: dict, source: str, line: int, did: str,
                              attempts: list | None, routed: bool) -> None:
        customer = event.get("customer")
        mapper = route.mapper(customer)
        if mapper is None:
            if routed:
                return  # the output maps some customers only, and not this one
            reason = f"output '{route.name}' has no mapping for customer {customer!r}"
        else:
            try:
                body = mapper(event)
                delivery = Delivery(did, body, event, route.name, source, line)
                # Serialised here, once (the output reuses it): a body JSON cannot hold
                # (an integer beyond 64 bits, say) fails this event, not a worker.
                delivery.body_json()
            except EventError as exc:
                reason = f"mapping '{route.mapping_name(customer)}' failed: {exc}"
            except TypeError as exc:  # orjson.JSONEncodeError
                reason = (f"mapping '{route.mapping_name(customer)}' made a body that is "
                          f"not valid JSON: {exc}")
            else:
                if attempts:
                    delivery.attempts = list(attempts)  # a replay keeps the history
                await self.engines[route.name].submit(delivery)
                return
        self.result.map_failed += 1
        self._reject(source, line, f"{route.name}: {reason}",
                     event_record(event, stage="map", output=route.name, source=source,
                                  line=line, reason=reason, delivery_id=did, attempts=attempts))

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


def missing_fields(event: dict) -> str | None:
    """Why an event cannot be routed (no usable ``id`` or ``customer``), or None."""
    for name in ("id", "customer"):
        value = event.get(name)
        if value is None:
            return f"event has no '{name}' field"
        if not isinstance(value, str) or not value:
            return f"event field '{name}' must be a non-empty string"
    return None


def build_outputs(config: Config, names: Iterable[str] | None = None) -> dict:
    """Instantiate the configured outputs (all, or ``names``); nothing is opened yet."""
    wanted = config.outputs if names is None else names
    return {name: config.outputs[name].create() for name in wanted}


def run(config: Config, router: Router, paths: list[str], *, dead_letter_path: str | None = None,
        shutdown_timeout: float | None = None, progress: bool = False,
        metrics_listen: str | None = None) -> RunResult:
    """Run the pipeline to the end of the inputs (or a signal); returns what happened.

    ``progress``: show a live status line on stderr (see :mod:`nwpipe.commands.progress`).
    ``metrics_listen``: ``HOST:PORT`` where /healthz, /readyz and /metrics answer meanwhile.
    """
    dead_letter = DeadLetterFile(dead_letter_path or config.dead_letter)
    dead_letter.check()  # a dead-letter file that cannot be written is found before reading
    tune_gc()
    try:
        pipeline = Pipeline(config, router, build_outputs(config), dead_letter=dead_letter,
                            shutdown_timeout=shutdown_timeout, progress=make_progress(progress))
        if metrics_listen is None:
            return event_loop_run(pipeline.run(paths))
        return event_loop_run(with_metrics(pipeline, paths, metrics_listen))
    finally:
        dead_letter.close()


async def with_metrics(pipeline: Pipeline, paths: list[str], listen: str) -> RunResult:
    """Run ``pipeline`` with the operations endpoints on ``listen`` meanwhile."""
    from nwpipe.engine.metrics import Metrics
    from nwpipe.net.ops import start_ops_server

    metrics = Metrics()
    metrics.watch_pipeline(pipeline.result, pipeline.engines, pipeline.dead_letter)
    runner = await start_ops_server(listen, metrics)
    try:
        return await pipeline.run(paths)
    finally:
        await runner.cleanup()


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
