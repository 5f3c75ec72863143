"""``nwpipe serve``: the always-on mode. Netography POSTs events; nwpipe queues and delivers.

The HTTP intake (:mod:`nwpipe.sources.http`) commits each request's events to the
durable queue and only then answers 2xx; delivery reads them from the queue (the
dispatcher, with the same engines, mappings, retries and dead letters as ``run``), and an
event leaves the queue only when every output that takes it has settled it.

Shutdown (SIGTERM, SIGINT): new POSTs are answered 503 with ``Retry-After`` at once;
requests already being committed finish; deliveries in flight get ``shutdown_timeout``
seconds; everything else stays in the queue for the next start (nothing is
dead-lettered because of a shutdown). Exit 0. A second signal stops at once (what was
not delivered is still in the queue).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal

import orjson

from nwpipe.config import Config
from nwpipe.engine.metrics import Metrics
from nwpipe.engine.pipeline import (
    Pipeline,
    RunResult,
    build_outputs,
    make_dead_letters,
)
from nwpipe.numbers import count, plural
from nwpipe.queue import QueueError, QueueFull, QueueSettings, create_queue
from nwpipe.sources.decode import Event
from nwpipe.sources.serve_settings import check_listen
from nwpipe.transform.routing import Router

log = logging.getLogger("nwpipe")

EXIT_OK = 0


def serve_settings(config: Config, *, listen: str | None = None,
                   metrics_listen: str | None = None):
    """The config's ``[serve]`` settings with the command line's overrides."""
    settings = config.serve
    for flag, value in (("--listen", listen), ("--metrics-listen", metrics_listen)):
        if value is not None:
            check_listen(flag, value)
    if listen is not None:
        settings = dataclasses.replace(settings, listen=listen)
    if metrics_listen is not None:
        settings = dataclasses.replace(settings, metrics_listen=metrics_listen)
    return settings


class _Coalesce:
    """Puts made during one turn of the event loop go to the queue as one ``put``.

    Each request is one small put; under load dozens arrive in the same turn, and one
    hand-over to the queue's writer (and one wake-up back) serves them all. An error
    (the queue full, the disk) goes to every request of the group.
    """

    def __init__(self, put):
        self._put = put
        self._items: list = []
        self._waiters: list[asyncio.Future] = []
        self._scheduled = False

    async def __call__(self, items) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._items.extend(items)
        self._waiters.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await waiter

    def _flush(self) -> None:
        items, waiters = self._items, self._waiters
        self._items, self._waiters, self._scheduled = [], [], False
        task = asyncio.ensure_future(self._put(items))
        task.add_done_callback(lambda done: _settle_all(done, waiters))


def _settle_all(done: asyncio.Future, waiters: list[asyncio.Future]) -> None:
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    for waiter in waiters:
        if waiter.done():
            continue
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(None)


class Service:
    """One ``nwpipe serve`` process: the intake, and the pipeline delivering from the queue
    (``deliver=False``: the intake only; another process delivers)."""

    def __init__(self, config: Config, router: Router, queue_settings: QueueSettings, *,
                 listen: str | None = None, metrics_listen: str | None = None,
                 dead_letter_path: str | None = None, shutdown_timeout: float | None = None,
                 deliver: bool = True, reloader=None):
        """``reloader``: a :class:`nwpipe.engine.reload.Reloader`, to reload the config on
        SIGHUP."""
        self.config = config
        self.router = router
        self.settings = serve_settings(config, listen=listen, metrics_listen=metrics_listen)
        # with a Redis queue, the stream PREFIX:dead that the whole fleet shares
        self.dead_letter = make_dead_letters(config, dead_letter_path)
        self.shutdown_timeout = (config.shutdown_timeout if shutdown_timeout is None
                                 else shutdown_timeout)
        self.metrics = Metrics()
        self.queue = create_queue(queue_settings)
        outputs = build_outputs(config, None if deliver else ())
        # durable: every event is in the queue before its 2xx, and delivered from there
        self.pipeline = Pipeline(config, router, outputs, dead_letter=self.dead_letter,
                                 shutdown_timeout=self.shutdown_timeout, queue=self.queue,
                                 durable=True)
        self.pipeline.reloader = reloader
        self.pipeline.command = None  # what stays queued is said once, in the closing line
        self._store_error: str | None = None
        self._full = False  # the last put was refused: the queue is at max_bytes
        self._full_bytes: int | None = None  # what it held then

    # -- intake and readiness -----------------------------------------------------------

    async def commit(self, events: list[Event]) -> None:
        """Make ``events`` durable (Queue.put); remembers whether the store can be written."""
        items = [(e.data["id"], orjson.dumps(e.data), f"{e.source}:{e.line}") for e in events]
        try:
            await self.queue.put(items)
        except QueueFull:
            self._full = True
            raise
        except QueueError as exc:
            self._store_error = str(exc)
            raise
        self.pipeline.result.put += len(items)
        self._store_error = None
        self._full = False
        self._full_bytes = None

    async def ready(self) -> str | None:
        """Why this process cannot take events now (for /readyz), or None."""
        if self.pipeline.stopping:
            return "shutting down"
        if self._store_error is not None:
            return f"the queue cannot be written: {self._store_error}"
        free = self._disk_free()
        if free is not None and free < self.settings.max_body_bytes:
            return (f"the disk of the queue has {free:,} bytes free, less than one request "
                    f"may need (max_body_bytes = {self.settings.max_body_bytes:,})")
        try:
            status = await self.queue.status()
        except QueueError as exc:
            return f"the queue cannot be read: {exc}"
        if self._full:
            # Full since a put was refused, until delivery has made room (the size
            # went down since): a probe must not keep it "full" with nobody posting.
            if self._full_bytes is None or status.bytes >= self._full_bytes:
                self._full_bytes = status.bytes if self._full_bytes is None else self._full_bytes
                return (f"the queue is full ({status.bytes:,} bytes stored, "
                        f"queue.max_bytes = {self.queue.max_bytes:,})")
            self._full = False
            self._full_bytes = None
        return None

    def _disk_free(self) -> int | None:
        """Bytes free for an SQLite queue file (None: a Redis queue, or unknown)."""
        settings = self.queue.settings
        if settings.url:
            return None
        try:
            fs = os.statvfs(os.path.dirname(os.path.abspath(settings.path)))
        except OSError:
            return None
        return fs.f_bavail * fs.f_frsize

    # -- the service -------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        from nwpipe.sources.http import DeadLetterRefusals, IntakeServer

        self.dead_letter.check()
        pipeline = self.pipeline
        intake = IntakeServer(self.settings, _Coalesce(self.commit),
                              DeadLetterRefusals(self.dead_letter), self.metrics,
                              ready=self.ready, result=pipeline.result)
        self.metrics.watch_pipeline(pipeline.result, pipeline.engines, self.dead_letter)
        self.metrics.watch_queue(self.queue.status, self.queue)

        async def take_posts() -> None:
            # The pipeline has opened the queue and started delivering from it.
            await intake.start()
            await pipeline.stopped()
            intake.stop_accepting()  # 503 from now on; the listener stays until the end
            signum = pipeline.result.signal
            if signum is not None:
                log.info("serve: %s: new posts get 503; deliveries in flight get %g s; "
                         "the rest stays queued", signal.Signals(signum).name,
                         self.shutdown_timeout)
            # a POST being stored now still gets its answer (2xx once durable)
            if not await intake.wait_idle(self.shutdown_timeout):
                log.warning("serve: requests still being received after %g s; their senders "
                            "get no answer and will send them again", self.shutdown_timeout)

        try:
            result = await pipeline.execute(take_posts)
        finally:
            await intake.close()
            self.dead_letter.close()
        # a warning when events stay queued, so that --quiet still says so
        log.log(logging.WARNING if result.left_queued else logging.INFO, "serve: stopped; %s",
                summary(result))
        # stopped by a signal as documented: nothing acknowledged is lost, so 0
        return EXIT_OK if result.signal is not None else result.exit_code


def summary(result: RunResult) -> str:
    """serve's closing line: the run's summary, with the queue in serve's words (what was
    received, what stays for the next start) said once."""
    line = dataclasses.replace(result, queue=None).summary()
    if result.queue is None:
        return line
    disk = []
    if result.backlog_found:
        disk.append(f"{count(result.backlog_found)} from before this start")
    disk.append(f"{count(result.put)} received")
    if not result.shared:
        left = result.left_queued
        disk.append(f"{plural(left, 'event')} {'stays' if left == 1 else 'stay'} queued for "
                    "the next start")
    return line + f"; queue {result.queue}: " + ", ".join(disk)


def serve(config: Config, router: Router, queue_settings: QueueSettings, **options) -> int:
    """Run ``nwpipe serve`` to the end (a signal); returns the exit code."""
    from nwpipe.engine.pipeline import event_loop_run, tune_gc

    tune_gc()
    service = Service(config, router, queue_settings, **options)
    return event_loop_run(service.run())
