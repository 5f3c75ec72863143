"""Shared fixtures: real HTTP(S) receivers on 127.0.0.1, throw-away TLS certificates,
sample Netography events and deliveries.

A receiver records every request and answers as the test tells it::

    async def test_something(receiver):
        receiver.reply(status=503, headers={"Retry-After": "2"})   # every request
        receiver.queue(500).queue(502, delay=0.1)                   # the next ones, in order
        receiver.handler = my_async_handler                         # full control
        ...
        assert receiver.requests[0].json() == {...}

``make_receiver(ssl_context=...)`` starts more (HTTPS, mutual TLS); ``tls`` holds a CA
made by trustme and certificates for 127.0.0.1 and localhost.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import socket
import ssl
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson
import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDictProxy

from nwpipe.outputs import Delivery

# --- HTTP receiver ---------------------------------------------------------------------


@dataclass
class Reply:
    """How the receiver answers one request. ``delay`` seconds pass before answering."""

    status: int = 200
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Recorded:
    """One request as the receiver saw it.

    ``target`` is the request target exactly as sent (path and query, still
    percent-encoded); ``raw_body`` the bytes on the wire; ``body`` those bytes decoded
    per ``Content-Encoding`` (gzip, deflate); ``peer`` the client's (host, port), which
    tells connections apart; ``client_cert`` the client certificate seen over mutual TLS.
    """

    method: str
    target: str
    path: str
    query: str
    headers: CIMultiDictProxy
    raw_body: bytes
    peer: tuple | None = None
    client_cert: dict | None = None

    @property
    def body(self) -> bytes:
        encoding = self.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            return gzip.decompress(self.raw_body)
        if encoding == "deflate":
            return zlib.decompress(self.raw_body)
        return self.raw_body

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)

    def ndjson(self) -> list:
        """The body parsed as JSON lines."""
        return [orjson.loads(line) for line in self.body.splitlines() if line.strip()]


Handler = Callable[[web.Request, Recorded], Awaitable["web.StreamResponse | None"]]


class Receiver:
    """A real aiohttp server on 127.0.0.1 (an ephemeral port) that records requests.

    Answers, in order of precedence: ``handler`` (an async function of the request and
    its record; returning None falls through), the next queued ``Reply``, the default
    ``Reply`` set by :meth:`reply` (200 with an empty body at first).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.ssl_context = ssl_context
        self.requests: list[Recorded] = []
        self.handler: Handler | None = None
        self._default = Reply()
        self._queue: list[Reply] = []
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (https with an ssl_context), no slash."""
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def reply(self, status: int = 200, body: bytes | str = b"",
              headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        """Answer every later request this way (after any queued replies)."""
        self._default = Reply(status, body, headers or {}, delay)

    def queue(self, status: int = 200, body: bytes | str = b"",
              headers: dict[str, str] | None = None, delay: float = 0.0) -> Receiver:
        """Answer one more of the next requests this way (queued replies go in order,
        before the default one). Returns the receiver, so calls chain."""
        self._queue.append(Reply(status, body, headers or {}, delay))
        return self

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        """Wait until at least ``count`` requests have arrived; return them all."""
        async def arrived():
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.wait_for(arrived(), timeout)
        return self.requests

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        record = Recorded(
            method=request.method,
            target=request.raw_path,
            path=request.rel_url.raw_path,
            query=request.rel_url.raw_query_string,
            headers=request.headers,
            raw_body=await request.read(),
            peer=peer,
            client_cert=ssl_object.getpeercert() if ssl_object else None,
        )
        # record first: a test can see a request arrive even when the client gives up
        self.requests.append(record)
        self._arrived.set()
        if self.handler is not None:
            response = await self.handler(request, record)
            if response is not None:
                return response
        answer = self._queue.pop(0) if self._queue else self._default
        if answer.delay:
            await asyncio.sleep(answer.delay)
        body = answer.body.encode() if isinstance(answer.body, str) else answer.body
        return web.Response(status=answer.status, body=body, headers=answer.headers)

    async def start(self) -> Receiver:
        # auto_decompress off: tests see the bytes on the wire (Recorded.body decodes);
        # handler_cancellation on: a slow reply ends when the client gives up, so
        # stopping the server never waits for it
        server = web.Server(self._handle, auto_decompress=False, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


async def until(condition: Callable[[], Any], timeout: float = 30.0) -> None:
    """Wait for ``condition()`` to hold, polling, with a deadline that only a failure
    reaches (never a fixed sleep for something that can be waited for)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.fixture
async def make_receiver():
    """Factory: ``await make_receiver(ssl_context=None)`` starts a Receiver; all stop
    at the end of the test."""
    started: list[Receiver] = []

    async def make(ssl_context: ssl.SSLContext | None = None) -> Receiver:
        receiver = await Receiver(ssl_context).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(make_receiver) -> Receiver:
    """A plain HTTP Receiver on 127.0.0.1, answering 200 until told otherwise."""
    return await make_receiver()


@pytest.fixture
async def tls_receiver(make_receiver, tls) -> Receiver:
    """An HTTPS Receiver whose certificate (for 127.0.0.1) is signed by ``tls.ca``."""
    return await make_receiver(tls.server_context())


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- TLS -------------------------------------------------------------------------------


class TLSFiles:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client
    certificate, with PEM files for the settings that take paths."""

    def __init__(self, directory):
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client_cert = self.ca.issue_cert("client@nwpipe.test")
        self.ca_file = str(directory / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.client_cert_file = str(directory / "client-cert.pem")
        self.client_key_file = str(directory / "client-key.pem")
        self.client_pem_file = str(directory / "client.pem")  # certificate and key
        self.client_cert.cert_chain_pems[0].write_to_path(self.client_cert_file)
        self.client_cert.private_key_pem.write_to_path(self.client_key_file)
        self.client_cert.private_key_and_cert_chain_pem.write_to_path(self.client_pem_file)
        # a second CA nobody trusts: its certificates must be rejected
        self.other_ca = trustme.CA()

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """A server context presenting the 127.0.0.1 certificate; with
        ``require_client_cert`` it also demands a client certificate from ``ca``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        if require_client_cert:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> TLSFiles:
    """Session-wide TLS material made by trustme (see TLSFiles)."""
    return TLSFiles(tmp_path_factory.mktemp("tls"))


# --- events ----------------------------------------------------------------------------

#: a Netography Fusion event as the portal documents it (field names are fixed)
SAMPLE_EVENT: dict[str, Any] = {
    "alerttype": "start",
    "algorithm": "knownbotnet",
    "beta": False,
    "bypassdisplay": False,
    "bypassrule": False,
    "cachekey": "1.2.3.4 7.8.9.10",
    "categories": ["iprep"],
    "customer": "acme",
    "description": "Srcip reputation is a known botnet",
    "dstinternal": "",
    "dstip": ["7.8.9.10"],
    "duration": 0,
    "end": 0,
    "id": "00edee24-bc66-4b37-803c-123456789012",
    "ipinfo": [],
    "metrics": {"bits": {"avg": 0.0, "max": 0, "min": 0, "sum": 0}, "count": {"flow": 1}},
    "name": "",
    "rollupperiod": 300,
    "rules": None,
    "severity": "medium",
    "srcip": ["1.2.3.4"],
    "start": 1689391131,
    "summary": "Knownbotnet alert has started in <location> for device <devicename>",
    "tags": ["tag1", "tag2", "tag3"],
    "threshold": "count(track_by) >= 1",
    "timestamp": 1689391131,
    "track": "srcip dstip",
    "track_by": ["srcip", "dstip"],
    "updatecount": 1,
    "updateinterval": 300,
}


@pytest.fixture
def make_event() -> Callable[..., dict]:
    """Factory: ``make_event(customer="globex", alerttype="end")`` -> a fresh event."""
    def make(**fields: Any) -> dict:
        event = copy.deepcopy(SAMPLE_EVENT)
        event.update(fields)
        return event
    return make


@pytest.fixture
def make_delivery(make_event) -> Callable[..., Delivery]:
    """Factory for a Delivery: ``make_delivery(body=None, event=None, id=None,
    output="test")``; the body defaults to the event, the id to the event's
    ``id:alerttype:updatecount``."""
    def make(body: Any = None, event: dict | None = None, id: str | None = None,
             output: str = "test") -> Delivery:
        event = make_event() if event is None else event
        body = event if body is None else body
        if id is None:
            id = f"{event.get('id')}:{event.get('alerttype')}:{event.get('updatecount')}"
        return Delivery(id=id, body=body, event=event, output=output)
    return make


# --- Redis (a real redis-server; see tests/redisserver.py) ------------------------------

from redisserver import own_redis, redis_prefix, redis_server  # noqa: E402,F401 - fixtures
