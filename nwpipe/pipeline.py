"""Wire sources, routing, mapping and delivery together for ``nwpipe run``.

Parsing, routing and mapping are synchronous functions of one event; only delivery is
asynchronous. Every event read either reaches each of its outputs or is written to the
dead-letter file with the reason, also when the run is interrupted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from dataclasses import dataclass, field

from nwpipe.config import Config
from nwpipe.deadletter import DeadLetterFile, event_record, raw_record
from nwpipe.delivery import DeliveryEngine, OutputStats
from nwpipe.errors import EventError
from nwpipe.outputs import Delivery, delivery_id
from nwpipe.routing import Router
from nwpipe.sources import Decoder, Event, Reject, aiter_chunks, source_name

log = logging.getLogger("nwpipe")

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_DEAD_LETTERED = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: per-line messages shown before they are only counted
MAX_REPORTED_REJECTS = 50


@dataclass
class RunResult:
    """What a run did, for the summary line and the exit code."""

    read: int = 0
    rejected: int = 0
    map_failed: int = 0
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    seconds: float = 0.0
    signal: int | None = None
    dead_letter_path: str | None = None
    dead_lettered: int = 0

    @property
    def exit_code(self) -> int:
        if self.signal == signal.SIGINT:
            return EXIT_SIGINT
        if self.signal is not None:
            return EXIT_SIGTERM
        if self.dead_lettered or self.rejected:
            return EXIT_DEAD_LETTERED
        return EXIT_OK

    def summary(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        parts = [f"read {self.read} event{'s' if self.read != 1 else ''}",
                 f"rejected {self.rejected}"]
        for name, stats in self.outputs.items():
            text = f"{name}: {stats.delivered} delivered"
            if stats.retried:
                text += f", {stats.retried} retried"
            if stats.dead_lettered:
                text += f", {stats.dead_lettered} dead-lettered"
            parts.append(text)
        line = "; ".join(parts) + f" ({self.seconds:.2f} s, {rate:,.0f} events/s)"
        if self.dead_lettered:
            line += f"; dead letters in {self.dead_letter_path}"
        if self.signal is not None:
            line = f"interrupted by {signal.Signals(self.signal).name}: " + line
        return line


class Pipeline:
    """One run: read the inputs, route and map each event, hand it to the engines."""

    def __init__(self, config: Config, router: Router, outputs: dict, *,
                 dead_letter: DeadLetterFile, shutdown_timeout: float | None = None):
        self.config = config
        self.router = router
        self.dead_letter = dead_letter
        self.shutdown_timeout = (config.shutdown_timeout if shutdown_timeout is None
                                 else shutdown_timeout)
        self.result = RunResult(dead_letter_path=str(dead_letter.path))
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()
        self.engines: dict[str, DeliveryEngine] = {}
        for name, output in outputs.items():
            self.engines[name] = DeliveryEngine(output, config.outputs[name].engine, dead_letter,
                                                on_closed=self._output_closed)
            self.result.outputs[name] = self.engines[name].stats
        self._reported = 0

    # -- control ---------------------------------------------------------------

    def stop(self, signum: int | None = None) -> None:
        """Stop reading; the first call drains, a second one cuts the drain short."""
        if self._stop.is_set():
            self._abort.set()
            return
        if signum is not None:
            self.result.signal = signum
        self._stop.set()

    def _output_closed(self, reason: str) -> None:
        log.debug("%s; stopping", reason)
        self._stop.set()

    # -- the run ---------------------------------------------------------------

    async def run(self, paths: list[str]) -> RunResult:
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
            for path in paths:
                if self._stop.is_set():
                    break
                await self._read(path)
            if self._stop.is_set() and self.result.signal is not None:
                why = f"interrupted by {signal.Signals(self.result.signal).name} before delivery"
                for engine in self.engines.values():
                    await engine.refuse(why)
                timeout = self.shutdown_timeout
            else:
                timeout = None
            await asyncio.gather(*(e.drain(timeout, self._abort) for e in self.engines.values()))
        finally:
            for engine in self.engines.values():
                await engine.close()
            for signum in installed:
                loop.remove_signal_handler(signum)
            self.result.seconds = time.perf_counter() - started
            self.result.dead_lettered = self.dead_letter.count
            self._report_hidden()
        return self.result

    async def _read(self, path: str) -> None:
        decoder = Decoder(source_name(path), max_line_bytes=self.config.max_line_bytes)
        try:
            async for chunk in aiter_chunks(path):
                await self._handle(decoder.feed(chunk))
                if self._stop.is_set():
                    return
                # Reading a regular file never waits: give the deliveries a turn after
                # each chunk, so sending overlaps reading instead of starting only when
                # an output's queue is full.
                await asyncio.sleep(0)
        finally:
            # also after a read error (a truncated .gz): a partial event is still reported
            await self._handle(decoder.finish())

    async def _handle(self, records) -> None:
        for record in records:
            if isinstance(record, Reject):
                self.result.rejected += 1
                self._reject(record.source, record.line, record.reason,
                             raw_record(record.raw, source=record.source, line=record.line,
                                        reason=record.reason))
                continue
            event = record.data
            self.result.read += 1
            problem = _missing_fields(event)
            if problem:
                self.result.rejected += 1
                self._reject(record.source, record.line, problem,
                             event_record(event, stage="parse", output=None, source=record.source,
                                          line=record.line, reason=problem))
                continue
            await self._route(event, record)

    async def _route(self, event: dict, record: Event) -> None:
        did = delivery_id(event)
        customer = event.get("customer")
        try:
            routes = list(self.router.route(event))
        except EventError as exc:
            self.result.map_failed += 1
            self._reject(record.source, record.line, f"'when' failed: {exc}",
                         event_record(event, stage="map", output=None, source=record.source,
                                      line=record.line, reason=f"'when' failed: {exc}",
                                      delivery_id=did))
            return
        for route in routes:
            mapper = route.mapper(customer)
            if mapper is None:
                continue
            try:
                body = mapper(event)
            except EventError as exc:
                self.result.map_failed += 1
                reason = f"mapping '{route.mapping_name(customer)}' failed: {exc}"
                self._reject(record.source, record.line, f"{route.name}: {reason}",
                             event_record(event, stage="map", output=route.name,
                                          source=record.source, line=record.line, reason=reason,
                                          delivery_id=did))
                continue
            await self.engines[route.name].submit(
                Delivery(did, body, event, route.name, record.source, record.line))

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


def _missing_fields(event: dict) -> str | None:
    for name in ("id", "customer"):
        value = event.get(name)
        if value is None:
            return f"event has no '{name}' field"
        if not isinstance(value, str) or not value:
            return f"event field '{name}' must be a non-empty string"
    return None


def build_outputs(config: Config) -> dict:
    """Instantiate every configured output (nothing is opened yet)."""
    return {name: oc.create() for name, oc in config.outputs.items()}


def run(config: Config, router: Router, paths: list[str], *, dead_letter_path: str | None = None,
        shutdown_timeout: float | None = None) -> RunResult:
    """Run the pipeline to the end of the inputs (or a signal); returns what happened."""
    # Events are short-lived containers; the default collector thresholds make Python
    # scan them over and over (about 25% of decoding time). Objects alive now (config,
    # compiled templates) are frozen out of the scans.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    dead_letter = DeadLetterFile(dead_letter_path or config.dead_letter)
    try:
        pipeline = Pipeline(config, router, build_outputs(config), dead_letter=dead_letter,
                            shutdown_timeout=shutdown_timeout)
        return _event_loop_run(pipeline.run(paths))
    finally:
        dead_letter.close()


def _event_loop_run(coro):
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        return asyncio.run(coro)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    uvloop.install()  # pragma: no cover - Python 3.10
    return asyncio.run(coro)
