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
import signal

from nwpipe.config import Config
from nwpipe.engine.deadletter import DeadLetterFile
from nwpipe.engine.metrics import Metrics
from nwpipe.queue import QueueError, QueueFull, QueueSettings, create_queue
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
    """One ``nwpipe serve`` process: intake, queue and (unless ``deliver=False``) delivery."""

    def __init__(self, config: Config, router: Router, queue_settings: QueueSettings, *,
                 listen: str | None = None, metrics_listen: str | None = None,
                 dead_letter_path: str | None = None, shutdown_timeout: float | None = None,
                 deliver: bool = True):
        self.config = config
        self.router = router
        self.settings = serve_settings(config, listen=listen, metrics_listen=metrics_listen)
        self.queue_settings = queue_settings
        self.dead_letter = DeadLetterFile(dead_letter_path or config.dead_letter)
        self.shutdown_timeout = (config.shutdown_timeout if shutdown_timeout is None
                                 else shutdown_timeout)
        self.deliver = deliver
        self.metrics = Metrics()
        self.queue = create_queue(queue_settings)
        self._stop = asyncio.Event()
        self._signals = 0
        self._store_error: str | None = None
        self._full = False  # the last put was refused: the queue is at max_bytes
        self._full_bytes: int | None = None  # what it held then

    # -- readiness ---------------------------------------------------------------------

    async def commit(self, items) -> None:
        """Make ``items`` durable (Queue.put); remembers whether the store can be written."""
        try:
            await self.queue.put(items)
        except QueueFull:
            self._full = True
            raise
        except QueueError as exc:
            self._store_error = str(exc)
            raise
        self._store_error = None
        self._full = False
        self._full_bytes = None

    async def ready(self) -> str | None:
        """Why this process cannot take events now (for /readyz), or None."""
        if self._stop.is_set():
            return "shutting down"
        if self._store_error is not None:
            return f"the queue cannot be written: {self._store_error}"
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

    # -- the service -------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("serve: %s: no new events; finishing what is in flight (at most %g s)",
                     signal.Signals(signum).name, self.shutdown_timeout)
            self._stop.set()
        else:
            log.info("serve: second %s: stopping now; undelivered events stay queued",
                     signal.Signals(signum).name)
            if self._delivery is not None:
                self._delivery.cancel()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        from nwpipe.sources.http import IntakeServer

        self.dead_letter.check()
        await self.queue.open()
        self._delivery: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        installed = []
        intake = IntakeServer(self.settings, _Coalesce(self.commit), self.dead_letter,
                              self.metrics, ready=self.ready)
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._on_signal, signum)
                installed.append(signum)
            self.metrics.watch_queue(self.queue.status)
            await intake.start()
            if self.deliver:
                self._delivery = asyncio.ensure_future(self._deliver())
            stopped = asyncio.ensure_future(self._stop.wait())
            waiting = [stopped] + ([self._delivery] if self._delivery is not None else [])
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if self._delivery is not None and self._delivery.done() and not self._stop.is_set():
                self._delivery.result()  # delivery ended on its own: its error is the reason
            intake.stop_accepting()
            # a POST being committed now still gets its answer (2xx once durable)
            if not await intake.wait_idle(self.shutdown_timeout):
                log.warning("serve: requests still being received after %g s; their senders "
                            "get no answer and will send again", self.shutdown_timeout)
            await self._stop_delivery()
            try:
                depth = (await self.queue.status()).depth
                log.info("serve: stopped; %d event%s stay queued for the next start", depth,
                         "" if depth == 1 else "s")
            except QueueError:
                pass
        finally:
            await self._stop_delivery()
            await intake.close()
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self.queue.close()
            self.dead_letter.flush()
            self.dead_letter.close()
        return EXIT_OK

    async def _deliver(self) -> None:
        raise NotImplementedError("delivery from the queue")

    async def _stop_delivery(self) -> None:
        if self._delivery is None:
            return
        self._delivery.cancel()
        await asyncio.gather(self._delivery, return_exceptions=True)


def serve(config: Config, router: Router, queue_settings: QueueSettings, **options) -> int:
    """Run ``nwpipe serve`` to the end (a signal); returns the exit code."""
    from nwpipe.engine.pipeline import event_loop_run, tune_gc

    tune_gc()
    service = Service(config, router, queue_settings, **options)
    return event_loop_run(service.run())
