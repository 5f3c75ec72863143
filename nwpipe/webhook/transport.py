"""How a webhook request travels: the :class:`Transport` interface and the direct one,
the lean HTTP/1.1 client of :mod:`nwpipe.net.http1` (the aiohttp one, for proxies and
followed redirects, is in :mod:`nwpipe.webhook.aiohttp_transport`).

A transport is told once what every request to a URL shares (``prepare``) and then
sends requests with their own headers and body (``send``). It answers with an
:class:`~nwpipe.net.http1.Response` (status, reason, lower-cased headers, the first
bytes of the body) or raises; :mod:`nwpipe.webhook.classify` turns either into a result.

Both transports give the same answer for the same bytes on the wire:

- the status line and headers are the answer; once they have arrived, a body cut short
  (reset, closed, or not complete when the time is up) leaves the answer as it is,
  with the body received so far;
- a 2xx answer's body is not needed: one without a length (delimited by the server
  closing the connection) is not waited for, and the connection is closed instead;
- a status line that is not HTTP/1.x (``HTTP/2.0 200``) or a NUL, CR or LF inside a
  header is a :class:`~nwpipe.net.http1.ProtocolError`.
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol

from yarl import URL

from nwpipe.net import http1

#: how much of a response body is kept (for a Retry/Failed and the dead-letter file)
RESPONSE_SNIPPET = 1024
#: how much of a 2xx body is read to keep the connection reusable; a longer body
#: just costs that connection
DRAIN_LIMIT = 64 * 1024


class RedirectRefused(Exception):
    """A redirect that is not followed; ``location`` (if any) is the receiver's word
    for where, shown only after cleaning."""

    def __init__(self, message: str, location: str | None = None):
        super().__init__(message)
        self.location = location


class Transport(Protocol):
    """Sends requests of one webhook output to its receiver."""

    async def open(self) -> None:
        """Get ready to send (a connection pool or session)."""

    async def close(self) -> None:
        """Close every connection."""

    def prepare(self, url: URL, headers: dict[str, str]) -> Any:
        """What every request to ``url`` with ``headers`` shares, in this transport's
        form (made once per URL and header set, not per request)."""

    async def send(self, prepared: Any, extra: list[tuple[str, str]],
                   body: bytes) -> http1.Response:
        """Send one request: ``prepared``, then ``extra`` headers, then ``body``."""


def encode_headers(headers: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """Header lines as bytes; values go as UTF-8, as aiohttp sends them."""
    # names and values were checked for CR, LF and NUL when the config loaded
    # (templated values when rendered)
    items = headers.items() if isinstance(headers, dict) else headers
    return "".join([f"{name}: {value}\r\n" for name, value in items]).encode()


class DirectTransport:
    """The lean HTTP/1.1 client: keep-alive connections to the one origin, each request
    head encoded from a pre-encoded prefix."""

    def __init__(self, origin: str, method: str, *, ssl_context: ssl.SSLContext | None,
                 limit: int, timeout: float):
        url = URL(origin)
        self._host = url.raw_host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        if url.explicit_port and url.port != {"http": 80, "https": 443}[url.scheme]:
            host += f":{url.port}"
        self._host_line = f"Host: {host}\r\n".encode("ascii")
        self._method = method
        self._context = ssl_context
        self._limit = limit
        self._timeout = timeout
        self._pool: http1.Pool | None = None

    async def open(self) -> None:
        """Create the connection pool (connections open on first use)."""
        if self._pool is None:
            self._pool = http1.Pool(
                self._host, self._port, ssl_context=self._context,
                server_hostname=self._host if self._context is not None else None,
                limit=self._limit, keep=RESPONSE_SNIPPET, drain_limit=DRAIN_LIMIT)

    async def close(self) -> None:
        """Close the pool and its connections."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def prepare(self, url: URL, headers: dict[str, str]) -> bytes:
        """The request line, Host and ``headers``, encoded."""
        target = url.raw_path_qs or "/"
        return (f"{self._method} {target} HTTP/1.1\r\n".encode("ascii") + self._host_line
                + encode_headers(headers))

    async def send(self, prepared: bytes, extra: list[tuple[str, str]],
                   body: bytes) -> http1.Response:
        """Send one request and return the complete answer."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("WebhookOutput.send() called before open()")
        # the per-request part of the head in one encode (this runs for every event)
        lines = "".join([f"{name}: {value}\r\n" for name, value in extra])
        head = prepared + f"{lines}Content-Length: {len(body)}\r\n\r\n".encode()
        return await pool.request(head, body, self._timeout)
