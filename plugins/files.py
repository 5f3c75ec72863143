"""Built-in source ``files``: the paths given to ``nwpipe run`` in order (``-`` is stdin).

It is the source used without a ``[source]`` table. Plain, gzip-compressed and
concatenated JSON are decoded by :class:`nwpipe.sources.decode.Decoder`; an input that
cannot be read to the end is reported, counted, and the next one is read. A file has
nothing to confirm, so acknowledgements are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from typing import Any, AsyncGenerator, AsyncIterator, cast

from nwpipe import Source, hookimpl
from nwpipe.errors import NwpipeError
from nwpipe.sources.decode import Decoder, Event, Reject, aiter_chunks, source_name

log = logging.getLogger("nwpipe")


class FilesSource(Source):
    """Read the run's input paths one after the other."""

    takes_inputs = True

    def __init__(self, config: dict[str, Any], **kwargs: Any):
        super().__init__(config, **kwargs)
        if not self.inputs:
            self.inputs = ["-"]
        #: bytes of the inputs when every one is a regular file (for a percentage and
        #: an ETA on the progress line; .gz files count compressed), else None
        self.bytes_total = _total_size(self.inputs)
        self.bytes_read = 0
        self._fetch: asyncio.Future | None = None  # the read of the next input chunk
        self._fetch_cancelled = False

    def stop(self, reason: str | None = None) -> None:
        super().stop(reason)
        # A read waiting on a slow pipe would wait for the next line: end it now.
        if self._fetch is not None and not self._fetch.done():
            self._fetch_cancelled = True
            self._fetch.cancel()

    async def read(self) -> AsyncIterator[list[Event | Reject]]:
        for path in self.inputs:
            if self.stopping:
                break
            decoder = Decoder(source_name(path), max_line_bytes=self.max_line_bytes)
            failure: NwpipeError | None = None
            try:
                async for batch in self._read_one(path, decoder):
                    yield batch
            except NwpipeError as exc:
                failure = exc
            if failure is not None:
                # also after a read error (a truncated .gz): a partial event is reported
                rest = self._rest(decoder)
                if rest:
                    yield rest
                # What was read from it goes on to the outputs; so do the next inputs.
                self.unreadable += 1
                log.error("error: %s", failure)

    async def _read_one(self, path: str,
                        decoder: Decoder) -> AsyncIterator[list[Event | Reject]]:
        chunks = cast(AsyncGenerator[bytes, None], aiter_chunks(path, on_read=self._count))
        try:
            while not self.stopping:
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
                yield decoder.feed(chunk)
        finally:
            await chunks.aclose()
        rest = self._rest(decoder)
        if rest:
            yield rest

    def _rest(self, decoder: Decoder) -> list[Event | Reject]:
        # Stopped without a signal: the reader of an output went away (`run | head`),
        # and the rest of the input, a partial line included, is simply not read.
        if self.stopping and self.stop_reason is None:
            return []
        rest = decoder.finish()
        if self.stopping:
            rest = [Reject(r.raw, r.source, r.line, f"{self.stop_reason}: {r.reason}")
                    if isinstance(r, Reject) else r for r in rest]
        return rest

    def _count(self, size: int) -> None:
        self.bytes_read += size

    def describe(self) -> str:
        return "files " + " ".join(self.inputs)


def _total_size(paths: list[str]) -> int | None:
    total = 0
    for path in paths:
        try:
            info = os.stat(path) if path != "-" else None
        except OSError:
            return None
        if info is None or not stat.S_ISREG(info.st_mode):
            return None
        total += info.st_size
    return total


@hookimpl
def register_sources(register):
    register("files", FilesSource)
