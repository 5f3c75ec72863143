"""An nwpipe output plugin: send each event as one JSON line over a TCP connection.

    [outputs.collector]
    type = "tcp-jsonl"
    host = "127.0.0.1"
    port = 5170

The plugin only sends once and reports how it went; nwpipe's delivery engine retries,
keeps per-alert order, batches and dead-letters.
"""

from __future__ import annotations

import asyncio

from nwpipe import Delivered, Output, Retry, Setting, hookimpl


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


class TcpJsonlOutput(Output):
    """Write JSON lines to a TCP socket; reconnect when the connection drops."""

    settings = {
        "host": Setting(str, required=True, help="host to connect to"),
        "port": Setting(int, required=True, check=_port, help="TCP port"),
        "timeout": Setting(float, default=5.0, help="seconds to connect and write"),
    }
    concurrency = 1          # one connection, lines in order
    batch_max_events = 100   # the engine may hand over up to 100 events per send

    async def open(self) -> None:
        self._writer = None

    async def send(self, batch):
        data = b"".join(d.body_json() + b"\n" for d in batch)
        try:
            if self._writer is None:
                _, self._writer = await asyncio.wait_for(
                    asyncio.open_connection(self.config["host"], self.config["port"]),
                    self.config["timeout"])
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.config["timeout"])
        except (OSError, asyncio.TimeoutError) as exc:
            self._writer = None
            return Retry(f"{self.config['host']}:{self.config['port']}: {exc or 'timed out'}")
        return Delivered()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def describe(self) -> str:
        return f"JSON lines over TCP to {self.config['host']}:{self.config['port']}"


@hookimpl
def register_outputs(register):
    register("tcp-jsonl", TcpJsonlOutput)
