"""Built-in source ``http``: events POSTed over HTTP, for ``nwpipe run``.

The same intake as ``nwpipe serve`` (:class:`nwpipe.sources.http.IntakeServer`: body
shapes, authentication, signatures, TLS, limits, every answer), as a source plugin::

    [source]
    type     = "http"
    listen   = "0.0.0.0:8443"      # and every other key of [serve]
    username = "netography"
    password = "${SERVE_PASSWORD}"

A request is answered 2xx once nwpipe is done with its events, which is the source
contract's acknowledgement: every output delivered them or the dead-letter file holds
them (with ``--durable``: once they are committed to the queue). Refused pieces go to
the pipeline like any bad input (dead-lettered, stage ``parse``) and the answer waits
for that too. ``nwpipe serve`` is the always-on form of this: durable, 2xx as soon as
the events are in the queue, 503 when the queue is full.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from nwpipe import Source, hookimpl
from nwpipe.engine.metrics import Metrics
from nwpipe.sources.decode import Event, Reject
from nwpipe.sources.http import IntakeClosed, IntakeServer
from nwpipe.sources.serve_settings import SERVE, settings_from


class _Request:
    """The items of one request still waiting for their acknowledgement."""

    __slots__ = ("left", "done")

    def __init__(self, left: int, done: asyncio.Future):
        self.left = left
        self.done = done


class HttpSource(Source):
    """Take POSTed events; answer each request once its events are acknowledged."""

    settings = SERVE

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.serve = settings_from(config)
        self.metrics = Metrics()
        self._intake: IntakeServer | None = None
        self._batches: asyncio.Queue | None = None
        self._waiting: dict[int, tuple[Event | Reject, _Request]] = {}

    @classmethod
    def check_config(cls, config) -> None:
        settings_from(config)  # the checks of [serve]; ValueError names the key

    async def open(self) -> None:
        self._batches = asyncio.Queue()
        self._intake = IntakeServer(self.serve, self._hand_over, self._hand_over_refused,
                                    self.metrics)
        await self._intake.start()

    async def read(self):
        while True:
            batch = await self._batches.get()
            if batch is None:
                return
            yield batch

    async def _hand_over(self, events: list[Event]) -> None:
        await self._until_acknowledged(events)

    async def _hand_over_refused(self, refused: Sequence[tuple[Event | Reject, str]]) -> None:
        # the pipeline dead-letters them as it does any bad input, then acknowledges
        await self._until_acknowledged([item for item, _reason in refused])

    async def _until_acknowledged(self, items: list) -> None:
        if self.stopping:
            raise IntakeClosed("shutting down")
        request = _Request(len(items), asyncio.get_running_loop().create_future())
        for item in items:
            self._waiting[id(item)] = (item, request)
        assert self._batches is not None  # made by open()
        self._batches.put_nowait(items)
        await request.done

    def ack(self, item) -> None:
        entry = self._waiting.pop(id(item), None)
        if entry is None:
            return
        request = entry[1]
        request.left -= 1
        if not request.left and not request.done.done():
            request.done.set_result(None)

    def stop(self, reason: str | None = None) -> None:
        super().stop(reason)
        if self._intake is not None:
            self._intake.stop_accepting()
        if self._batches is not None:
            self._batches.put_nowait(None)  # after what requests handed over already

    async def close(self) -> None:
        # requests whose events were never acknowledged (the run ended without them)
        for _item, request in list(self._waiting.values()):
            if not request.done.done():
                request.done.set_exception(IntakeClosed("stopped before the events were "
                                                        "delivered"))
        self._waiting.clear()
        if self._intake is not None:
            await self._intake.close()

    def describe(self) -> str:
        where = self._intake.url if self._intake is not None and self._intake.url else \
            self.serve.listen
        return f"http {where}{self.serve.path}"


@hookimpl
def register_sources(register):
    register("http", HttpSource)
