"""The webhook output has two HTTP paths: the lean HTTP/1.1 client (nwpipe.net.http1) for
direct connections, and aiohttp for proxies and followed redirects. Both must send the
same request and report the same results; each test here runs on both."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import struct

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from nwpipe import Delivered, Failed, Retry
from nwpipe.settings import validate_settings
from nwpipe_plugins.webhook import WebhookOutput

# follow_redirects = true sends every request through aiohttp
PATHS = {"direct": {}, "aiohttp": {"follow_redirects": True}}


@pytest.fixture(params=sorted(PATHS))
def path(request) -> dict:
    return PATHS[request.param]


def make_output(path: dict, **table) -> WebhookOutput:
    config = validate_settings({**table, **path}, WebhookOutput.settings, key="outputs.soc")
    WebhookOutput.check_config(config)
    output = WebhookOutput("soc", config)
    output.concurrency = 4
    return output


async def send_once(output, batch):
    await output.open()
    try:
        return await output.send(batch)
    finally:
        await output.close()


async def test_same_request_on_both_paths(receiver, make_delivery):
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    delivery = make_delivery(body={"state": "start", "note": "é"})
    sent = {}
    for name, path in PATHS.items():
        output = make_output(path, url=receiver.url + "/in?x=1", username="soc", password="pw",
                             headers="X-Netography: Webhook, X-Env: prod",
                             signing_secret=secret, compression="gzip")
        assert await send_once(output, [delivery]) == Delivered()
        request = receiver.requests[-1]
        assert Webhook(secret).verify(request.body, dict(request.headers)) == delivery.body
        sent[name] = request
    direct, other = sent["direct"], sent["aiohttp"]
    assert (direct.method, direct.target) == (other.method, other.target) == ("POST", "/in?x=1")
    assert gzip.decompress(direct.raw_body) == gzip.decompress(other.raw_body)
    for header in ("Host", "Content-Type", "Content-Encoding", "Authorization", "User-Agent",
                   "X-Netography", "X-Env", "webhook-id", "Idempotency-Key",
                   "Content-Length"):
        assert direct.headers[header] == other.headers[header], header
    assert direct.headers["Authorization"] == "Basic " + base64.b64encode(b"soc:pw").decode()


async def test_batches_on_both_paths(receiver, make_delivery, make_event, path):
    batch = [make_delivery(event=make_event(id=f"a-{i}")) for i in range(3)]
    output = make_output(path, url=receiver.url, batch_format="ndjson")
    assert await send_once(output, batch) == Delivered()
    request = receiver.requests[0]
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert [e["id"] for e in request.ndjson()] == ["a-0", "a-1", "a-2"]
    assert request.headers["webhook-id"].startswith("batch_")


async def test_templated_url_and_header_on_both_paths(receiver, make_delivery, make_event, path):
    output = make_output(path, url=receiver.url + "/c/{{ customer }}",
                         headers={"X-Customer": "{{ customer }}"})
    batch = [make_delivery(event=make_event(customer=c)) for c in ("acme", "glo bex")]
    assert await send_once(output, batch) == Delivered()
    assert [(r.target, r.headers["X-Customer"]) for r in receiver.requests] == [
        ("/c/acme", "acme"), ("/c/glo%20bex", "glo bex")]


async def test_results_on_both_paths(receiver, make_delivery, path):
    receiver.queue(500, body="down").queue(429, headers={"Retry-After": "7"})
    receiver.queue(400, body="x" * 3000).queue(404)
    output = make_output(path, url=receiver.url)
    await output.open()
    try:
        assert await output.send([make_delivery()]) == Retry(
            "HTTP 500 Internal Server Error", status=500, response="down")
        result = await output.send([make_delivery()])
        assert (result.status, result.after) == (429, 7.0)
        result = await output.send([make_delivery()])
        assert result == Failed("HTTP 400 Bad Request", status=400, response="x" * 1024)
        assert (await output.send([make_delivery()])).status == 404
        assert await output.send([make_delivery()]) == Delivered()
    finally:
        await output.close()


async def test_failures_on_both_paths(receiver, tls_receiver, closed_port, make_delivery, path):
    result = await send_once(make_output(path, url=f"http://127.0.0.1:{closed_port}"),
                             [make_delivery()])
    assert result == Retry(f"connection refused to 127.0.0.1:{closed_port}")

    result = await send_once(make_output(path, url=tls_receiver.url), [make_delivery()])
    assert isinstance(result, Failed) and "certificate verify failed" in result.reason

    receiver.queue(200, delay=3)
    result = await send_once(make_output(path, url=receiver.url, timeout=0.1), [make_delivery()])
    assert result == Retry(f"timed out after 0.1 s (127.0.0.1:{receiver.port})")

    async def hang_up(request, record):
        request.transport.close()
        return web.Response()
    receiver.handler = hang_up
    result = await send_once(make_output(path, url=receiver.url), [make_delivery()])
    assert isinstance(result, Retry)
    assert f"127.0.0.1:{receiver.port} closed the connection" in result.reason


async def test_secrets_redacted_from_answers_on_both_paths(receiver, make_delivery, path):
    async def echo(request, record):
        return web.Response(status=401, text="got " + record.headers["Authorization"])
    receiver.handler = echo
    result = await send_once(make_output(path, url=receiver.url, bearer_token="t0ken-secret"),
                             [make_delivery()])
    assert result == Failed("HTTP 401 Unauthorized", status=401, response="got Bearer ***")


# --- answers the two HTTP stacks used to read differently ----------------------------------

class RawReceiver:
    """A TCP server on 127.0.0.1 that reads one request and writes scripted bytes: for
    answers no well-behaved HTTP server would send. ``RESET`` closes with a TCP RST;
    after the script the connection stays open until the client closes it."""

    RESET = object()

    def __init__(self, *script):
        self.script = script
        self.server = None
        self.url = ""
        self.requests = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            self.requests += 1
            for part in self.script:
                if part is self.RESET:
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(part)
                await writer.drain()
            await reader.read()  # keep the connection open until the client closes it
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_http_2_status_line_is_a_bad_response_on_both_paths(make_delivery, path):
    # HTTP/2 has no status line: a server writing one on an HTTP/1.1 connection is
    # broken, and its "200" cannot be trusted. Retried (the receiver deduplicates by
    # webhook-id), then dead-lettered with this reason.
    async with RawReceiver(b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok") as raw:
        result = await send_once(make_output(path, url=raw.url), [make_delivery()])
    port = raw.url.rsplit(":", 1)[1]
    assert result == Retry(f"bad HTTP response from 127.0.0.1:{port}: "
                           "not an HTTP/1.x status line: 'HTTP/2.0 200 OK'")


@pytest.mark.parametrize("status, expected", [
    (200, Delivered()),
    (500, Retry("HTTP 500 Internal Server Error", status=500, response="partial")),
])
async def test_reset_mid_body_after_the_head_on_both_paths(make_delivery, path, status,
                                                           expected):
    # the status line is the receiver's verdict: a body cut short does not change it
    head = b"HTTP/1.1 %d X\r\nContent-Length: 100\r\n\r\npartial" % status
    async with RawReceiver(head, RawReceiver.RESET) as raw:
        result = await send_once(make_output(path, url=raw.url), [make_delivery()])
    assert result == expected
    assert raw.requests == 1


async def test_2xx_without_length_on_a_kept_alive_connection_on_both_paths(make_delivery,
                                                                          path):
    # the body would end only when the server closes, which it does not: the status
    # is the answer, given at once (not after the timeout), and the request is not resent
    async with RawReceiver(b"HTTP/1.1 200 OK\r\n\r\naccepted") as raw:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await send_once(make_output(path, url=raw.url, timeout=30),
                                 [make_delivery()])
        took = loop.time() - started
    assert result == Delivered() and took < 15
    assert raw.requests == 1


async def test_error_without_length_on_a_kept_alive_connection_on_both_paths(make_delivery,
                                                                            path):
    # the body ends when the server closes or the deadline comes: the answer is the
    # status and what arrived of the body by then
    async with RawReceiver(b"HTTP/1.1 503 Busy\r\n\r\ntry later") as raw:
        result = await send_once(make_output(path, url=raw.url, timeout=0.5),
                                 [make_delivery()])
    assert result == Retry("HTTP 503 Service Unavailable", status=503, response="try later")


async def test_nul_in_a_response_header_is_named_on_both_paths(make_delivery, path):
    async with RawReceiver(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n") as raw:
        result = await send_once(make_output(path, url=raw.url), [make_delivery()])
    assert isinstance(result, Retry)
    assert result.reason.endswith("NUL in a response header"), result.reason


async def test_url_path_token_echoed_back_is_redacted_on_both_paths(receiver, make_delivery,
                                                                   path):
    token = "Zk3vQ9xLmW2pR7tY8uN4bC1d"

    async def echo(request, record):
        if request.headers.get("X-Round") == "1":
            return web.Response(status=300, headers={"Location": request.path + "/next"},
                                text=f"see {request.path}")
        return web.Response(status=404, reason=f"No {request.path}",
                            text=f"no hook at {request.path}\r\n\x1b[1Aok")
    receiver.handler = echo
    url = receiver.url + f"/services/T0123ABCD/B0123ABCD/{token}"
    result = await send_once(make_output(path, url=url), [make_delivery()])
    assert result == Failed("HTTP 404 Not Found", status=404,
                            response="no hook at /services/T0123ABCD/B0123ABCD/***\n[1Aok")
    result = await send_once(make_output(path, url=url, headers="X-Round: 1"),
                             [make_delivery()])
    assert result.status == 300 and token not in result.reason + result.response
    assert "redirect to /services/T0123ABCD/B0123ABCD/***/next not followed" in result.reason
