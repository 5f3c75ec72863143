"""An nwpipe plugin to copy: a ``tcp-jsonl`` output and a ``defang`` Jinja filter.

    [outputs.collector]
    type = "tcp-jsonl"
    host = "127.0.0.1"
    port = 5170

    [mappings.analyst]
    fields = { src = "{{ srcip | join_ips | defang }}" }    # 1[.]2[.]3[.]4

The output only sends once and reports how it went; nwpipe's delivery engine retries,
keeps per-alert order, batches and dead-letters.
"""

from __future__ import annotations

import asyncio

from nwpipe import Delivered, Failed, Output, Retry, Setting, hookimpl


def _port(value: int) -> int:
    # A `check` converts or rejects one value; its ValueError message reaches the user
    # as "nwpipe.toml: outputs.collector.port: must be a TCP port between 1 and 65535".
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


class TcpJsonlOutput(Output):
    """Write JSON lines to a TCP socket; reconnect when the connection drops."""

    settings = {
        "host": Setting(str, required=True, help="host to connect to"),
        "port": Setting(int, required=True, check=_port, help="TCP port"),
        "timeout": Setting(float, default=5.0, help="seconds to connect and write"),
        "max_line_bytes": Setting(int, default=1 << 20, help="longest line the collector takes"),
    }
    concurrency = 1          # one connection, lines in order
    batch_max_events = 100   # the engine may hand over up to 100 events per send

    @classmethod
    def check_config(cls, config):
        """Checks across settings run when the config loads; raise ValueError."""
        if config["timeout"] <= 0:
            raise ValueError("timeout must be more than 0 seconds")

    async def open(self) -> None:
        # Connect lazily in send(): a collector that is down at start-up is then
        # retried like any other outage instead of stopping the run.
        self._reader = self._writer = None

    async def send(self, batch):
        where = f"{self.config['host']}:{self.config['port']}"
        for delivery in batch:
            if len(delivery.body_json()) >= self.config["max_line_bytes"]:
                # permanent: sending it again cannot help, so no retry; the batch goes
                # to the dead-letter file with this reason
                return Failed(f"{where}: an event of {len(delivery.body_json())} bytes is "
                              "longer than max_line_bytes")
        data = b"".join(d.body_json() + b"\n" for d in batch)
        if self._writer is not None and self._reader.at_eof():
            await self.close()  # the collector hung up since the last send
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_connection(self.config["host"], self.config["port"]),
                    self.config["timeout"])
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.config["timeout"])
        except (OSError, asyncio.TimeoutError) as exc:
            # temporary: the engine tries again with backoff, then dead-letters
            await self.close()
            reason = getattr(exc, "strerror", None) or "timed out"
            return Retry(f"{where}: {reason}")
        return Delivered()

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass  # the connection was already broken

    def describe(self) -> str:
        return f"JSON lines over TCP to {self.config['host']}:{self.config['port']}"


def defang(value) -> str:
    """Make addresses safe to paste into a ticket: ``1.2.3.4`` -> ``1[.]2[.]3[.]4``."""
    text = "" if value is None else str(value)
    return text.replace(".", "[.]").replace(":", "[:]")


@hookimpl
def register_outputs(register):
    register("tcp-jsonl", TcpJsonlOutput)


@hookimpl
def register_jinja_filters(register):
    register("defang", defang)
