"""The lean HTTP/1.1 client (nwpipe.net.http1) against raw TCP servers on 127.0.0.1 that
answer with exactly the bytes each test scripts: framing, keep-alive, broken answers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct

import pytest

from nwpipe.net import http1

from conftest import until


class RawServer:
    """Reads each request (head and Content-Length body) and writes the next scripted
    answer. An answer is bytes, a list of bytes (written with pauses between them; an
    ``asyncio.Event`` in the list holds the rest back until it is set), or ``CLOSE``
    (hang up without answering). ``close_after`` hangs up after answering."""

    CLOSE = object()

    def __init__(self):
        self.answers: list = []
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        #: connections this server has closed (its end)
        self.closed = 0
        self.close_after = False
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, ssl_context=None) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                answer = self.answers.pop(0) if self.answers else OK
                if answer is self.CLOSE:
                    return
                for part in answer if isinstance(answer, list) else [answer]:
                    if isinstance(part, asyncio.Event):  # the test says when to go on
                        await part.wait()
                        continue
                    writer.write(part)
                    try:
                        await writer.drain()
                    except ConnectionError:  # the client went away mid-answer
                        return
                    if isinstance(answer, list):
                        # the behaviour under test: an answer that arrives in pieces
                        await asyncio.sleep(0.01)
                if self.close_after:
                    return
        finally:
            writer.close()
            self.closed += 1

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def server():
    raw = await RawServer().start()
    yield raw
    await raw.stop()


def head(path="/in", body=b"{}"):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()


async def ask(pool: http1.Pool, body=b"{}", timeout=5.0) -> http1.Response:
    return await pool.request(head(body=body), body, timeout)


@pytest.fixture
async def pool(server):
    p = http1.Pool("127.0.0.1", server.port, limit=4, keep=16, drain_limit=1000)
    yield p
    await p.close()


async def test_request_is_sent_as_given_and_connection_kept_alive(server, pool):
    for i in range(3):
        response = await ask(pool, body=b'{"n": %d}' % i)
        assert (response.status, response.reason, response.body) == (200, "OK", b"ok")
    assert server.connections == 1
    assert server.requests[2] == (head(body=b'{"n": 2}'), b'{"n": 2}')


async def test_chunked_body_with_extensions_and_trailers(server, pool):
    server.answers.append([b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n"
                           b"X-A: 1\r\n\r\n5;ext=1\r\nhello\r\n", b"6\r\n world\r\n0\r\n",
                           b"Trailer: x\r\n\r\n"])
    response = await ask(pool)
    assert (response.status, response.body) == (500, b"hello world")
    assert response.headers["x-a"] == "1"
    assert (await ask(pool)).status == 200
    assert server.connections == 1  # the chunked answer left the connection usable


async def test_answer_split_into_single_bytes(server, pool):
    answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nslow"
    server.answers.append([answer[i:i + 1] for i in range(len(answer))])
    response = await ask(pool)
    assert (response.status, response.headers["retry-after"], response.body) == (429, "3", b"slow")


async def test_informational_answers_are_skipped(server, pool):
    server.answers.append(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
                          b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert (await ask(pool)).status == 201
    assert (await ask(pool)).status == 200


async def test_close_delimited_body_and_connection_close(server, pool):
    server.answers.append(b"HTTP/1.1 400 Bad Request\r\n\r\nno length given")
    server.close_after = True
    response = await ask(pool)
    assert (response.status, response.body) == (400, b"no length given")
    server.close_after = False
    server.answers.append(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert (await ask(pool)).status == 200
    assert (await ask(pool)).status == 200
    assert server.connections == 3  # neither answer left a reusable connection


async def test_http_1_0_answer_closes_unless_keep_alive(server, pool):
    server.answers.append(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    server.close_after = True
    assert (await ask(pool)).status == 200
    server.close_after = False
    server.answers.append(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert (await ask(pool)).status == 200
    assert (await ask(pool)).status == 200
    assert server.connections == 2


async def test_only_the_first_bytes_are_kept_and_huge_bodies_are_cut(server, pool):
    server.answers.append(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    response = await ask(pool)
    assert (response.status, response.body) == (502, b"x" * 16)
    assert (await ask(pool)).status == 200
    assert server.connections == 2  # over the drain limit: closed, not read to the end


@pytest.mark.parametrize("answer, problem", [
    (b"SMTP ready\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 2x0 OK\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "conflicting"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", "folding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    (b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", "NUL in a response header"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", "bare CR or LF"),
])
async def test_broken_answers_are_protocol_errors(server, pool, answer, problem):
    server.answers.append(answer)
    with pytest.raises(http1.ProtocolError, match=problem):
        await ask(pool)
    assert (await ask(pool)).status == 200  # a new connection works


async def test_hang_up_without_answer_on_a_new_connection(server, pool):
    server.answers.append(RawServer.CLOSE)
    with pytest.raises(http1.ServerDisconnected, match="without a response"):
        await ask(pool)
    assert len(server.requests) == 1  # not resent: the server may have acted on it


async def test_hang_up_mid_head(server, pool):
    server.answers.append(b"HTTP/1.1 200 OK\r\nContent-Len")
    server.close_after = True
    with pytest.raises(http1.ServerDisconnected, match="complete response"):
        await ask(pool)


@pytest.mark.parametrize("status", [200, 500])
async def test_hang_up_mid_body_keeps_the_answer(server, pool, status):
    # the head is the answer; what became of the body does not change it
    server.answers.append(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\nabc" % status)
    server.close_after = True
    response = await ask(pool)
    assert (response.status, response.body) == (status, b"abc")
    server.close_after = False
    assert (await ask(pool)).status == 200
    assert server.connections == 2


async def test_reset_mid_body_keeps_the_answer():
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        # SO_LINGER 0: close with a RST, not a FIN
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
        writer.transport.abort()
    raw = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = http1.Pool("127.0.0.1", raw.sockets[0].getsockname()[1], keep=16)
    try:
        response = await ask(pool)
        assert (response.status, response.body) == (200, b"partial")
    finally:
        await pool.close()
        raw.close()
        await raw.wait_closed()


async def test_unframed_2xx_on_a_kept_alive_connection_is_not_waited_for(server, pool):
    # no Content-Length, no chunking, and the server keeps the connection open: the
    # body would end only when it closes. The status is all that is needed.
    server.answers.append(b"HTTP/1.1 200 OK\r\n\r\nsome body")
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await ask(pool, timeout=30)
    assert response.status == 200 and loop.time() - started < 10
    assert (await ask(pool)).status == 200
    assert server.connections == 2  # that connection was closed, not reused


async def test_unframed_error_body_ends_at_the_kept_bytes(server, pool):
    server.answers.append(b"HTTP/1.1 500 Oops\r\n\r\n" + b"e" * 40)
    response = await ask(pool, timeout=30)
    assert (response.status, response.body) == (500, b"e" * 16)


async def test_deadline_after_the_head_keeps_the_answer(server, pool):
    server.answers.append(b"HTTP/1.1 503 Busy\r\n\r\nbusy")
    response = await ask(pool, timeout=0.3)
    assert (response.status, response.body) == (503, b"busy")


async def test_idle_connection_closed_by_the_server_is_replaced(server, pool):
    server.close_after = True  # like a short keep-alive timeout, but without saying so
    assert (await ask(pool)).status == 200
    await until(lambda: server.closed == 1)  # the server has hung up its end
    assert (await ask(pool)).status == 200
    assert server.connections == 2 and len(server.requests) == 2


async def test_stale_connection_noticed_only_on_send_is_resent_once(server, pool):
    assert (await ask(pool)).status == 200
    # the next request on that connection gets no answer at all (the server "timed out"
    # its end just as the request went out): sent once more on a new connection
    server.answers.append(RawServer.CLOSE)
    assert (await ask(pool)).status == 200
    assert server.connections == 2 and len(server.requests) == 3


async def test_timeout_covers_the_whole_request(server, pool):
    server.answers.append([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 0\r\n\r\n"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        await ask(pool, timeout=0.005)
    assert loop.time() - started < 2
    assert (await ask(pool)).status == 200
    assert server.connections == 2  # the timed-out connection was not reused


async def test_cancelled_request_does_not_leave_a_connection_behind(server, pool):
    rest = asyncio.Event()
    server.answers.append([b"HTTP/1.1 200 OK\r\n", rest, b"Content-Length: 0\r\n\r\n"])
    task = asyncio.ensure_future(ask(pool))
    await until(lambda: server.requests)  # in flight: sent, its answer held half-way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rest.set()
    assert (await ask(pool)).status == 200
    assert server.connections == 2  # the cancelled one's connection was not reused


async def test_at_most_limit_requests_and_connections(server):
    server.answers.extend([[b"HTTP/1.1 200 OK\r\n", b"Content-Length: 0\r\n\r\n"]] * 12)
    pool = http1.Pool("127.0.0.1", server.port, limit=3)
    try:
        answers = await asyncio.gather(*(ask(pool) for _ in range(12)))
    finally:
        await pool.close()
    assert [a.status for a in answers] == [200] * 12
    assert server.connections == 3


async def test_connection_refused_is_a_connect_error(closed_port):
    pool = http1.Pool("127.0.0.1", closed_port)
    with pytest.raises(http1.ConnectError) as info:
        await ask(pool)
    assert isinstance(info.value.os_error, ConnectionRefusedError)
    await pool.close()


async def test_tls_verified_and_unverified(tls):
    raw = await RawServer().start(tls.server_context())
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        pool = http1.Pool("127.0.0.1", raw.port, ssl_context=context,
                          server_hostname="127.0.0.1")
        assert (await ask(pool)).status == 200
        await pool.close()
        pool = http1.Pool("127.0.0.1", raw.port, ssl_context=ssl.create_default_context(),
                          server_hostname="127.0.0.1")
        with pytest.raises(ssl.SSLCertVerificationError):
            await ask(pool)
        await pool.close()
    finally:
        await raw.stop()
