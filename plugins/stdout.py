"""The ``stdout`` output: each mapped event as one compact JSON line on standard output."""

from __future__ import annotations

import sys

from nwpipe import Delivered, Output, hookimpl
from nwpipe.outputs import OutputClosed


class StdoutOutput(Output):
    """Write each body as one JSON line to standard output.

    This is the built-in default when no config is given. When the reader goes away
    (``nwpipe run | head``), the run stops quietly.
    """

    settings = {}
    concurrency = 1
    batch_max_events = 500

    async def open(self) -> None:
        self._out = sys.stdout.buffer

    async def send(self, batch):
        # one join and one write per batch: no bytes object per line
        data = b"\n".join([d.body_json() for d in batch]) + b"\n"
        try:
            self._out.write(data)
            self._out.flush()
        except BrokenPipeError:
            raise OutputClosed("standard output was closed by the reader") from None
        return Delivered()

    def describe(self) -> str:
        return "JSON lines to standard output"


@hookimpl
def register_outputs(register):
    register("stdout", StdoutOutput)
