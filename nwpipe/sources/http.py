"""The HTTP intake of ``nwpipe serve``: Netography (or anything) POSTs events to it.

A request body holds one event (compact or pretty-printed, as Netography sends it), a
JSON array of events, or JSON lines; the decoder of ``nwpipe run`` reads it, so every
input shape ``run`` accepts is accepted here too. The answer is 2xx only after the
events are committed to the durable queue (``commit`` returned): acknowledged means
durable. Every other answer is a JSON body ``{"error": "..."}`` and one log line that
never holds a secret or a control character sent by the client:

=====  ==================================================================================
401    wrong or missing credentials, or a bad Standard Webhooks signature
       (``WWW-Authenticate`` says which scheme)
405    a method other than POST on the intake path (``Allow: POST``)
408    the body did not arrive within ``read_timeout``
413    the body is larger than ``max_body_bytes``
400    nothing usable: not JSON, not an object, no ``id``/``customer``. With several
       events of which some are good, the good ones are committed and the answer says
       ``{"accepted": N, "refused": [{"index": I, "error": "..."}]}`` (still 400, so that
       a sender notices); refused pieces go to the dead-letter file with stage ``intake``
503    shutting down, the queue full, or the queue cannot be written (``Retry-After``)
=====  ==================================================================================

Slow or stalled clients: a connection must deliver its request headers within
``read_timeout`` of connecting (or of its previous answer), and its body within
``read_timeout`` of the headers; at most ``max_connections`` connections are open at
once (more are closed as soon as they connect).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from typing import Awaitable, Callable, Sequence

import orjson
from aiohttp import web

from nwpipe.aio import within
from nwpipe.engine.deadletter import DeadLetterFile, event_record, raw_record
from nwpipe.engine.metrics import Metrics
from nwpipe.net.httputil import printable
from nwpipe.net.ops import ReadyCheck, add_ops_routes, bound_url, start_site
from nwpipe.net.signature import signing_key, verify
from nwpipe.queue.base import QueueError, QueueFull
from nwpipe.sources.decode import Decoder, Event, Reject
from nwpipe.sources.serve_settings import ServeSettings
from nwpipe.transform.route_map import check_event

log = logging.getLogger("nwpipe")

#: ``commit(events)``: take the valid events of a request; returns once they are safe
#: (``nwpipe serve``: committed to the queue). QueueFull / QueueError: answered 503.
Commit = Callable[[list[Event]], Awaitable[object]]
#: ``refuse([(piece, reason), ...])``: keep what was refused (the dead-letter file)
Refuse = Callable[[Sequence[tuple[Event | Reject, str]]], Awaitable[object]]

#: seconds a sender is asked to wait before trying again after a 503
RETRY_AFTER = 5

#: refused pieces listed in a 400 answer at most (all are dead-lettered and counted)
MAX_LISTED_REFUSALS = 100


class _BodyTooLarge(Exception):
    pass


class IntakeClosed(Exception):
    """Raised by ``commit``/``refuse`` when the events cannot be taken any more (the
    process is stopping): the sender gets 503 and sends them again later."""


def _json(status: int, value: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), headers=headers,
                        content_type="application/json")


def decode_body(body: bytes, source: str, max_bytes: int) -> list[Event | Reject]:
    """The events (and rejects) of a request body, in order, with their lines.

    One JSON object, the common case (Netography posts one event per request, compact
    or pretty-printed), is parsed whole; anything else (an array, JSON lines, bad
    input) goes through the decoder of ``nwpipe run``, which names lines.
    """
    start = body.lstrip()
    if start[:1] == b"{":
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                # the line where the object starts, after any blank lines
                return [Event(value, source, 1 + body.count(b"\n", 0, len(body) - len(start)))]
    decoder = Decoder(source, max_line_bytes=max_bytes)
    records = decoder.feed(body)
    records.extend(decoder.finish())
    return records


def intake_records(refused: Sequence[tuple[Event | Reject, str]]) -> list[dict]:
    """Dead-letter records (stage ``intake``) of pieces of request bodies refused."""
    records = []
    for item, reason in refused:
        if isinstance(item, Reject):
            records.append(raw_record(item.raw, source=item.source, line=item.line,
                                      reason=reason, stage="intake"))
        else:
            records.append(event_record(item.data, stage="intake", output=None,
                                        source=item.source, line=item.line, reason=reason))
    return records


class DeadLetterRefusals:
    """``refuse`` for :class:`IntakeServer`: intake records into the dead-letter file,
    on disk before the answer."""

    def __init__(self, dead_letter: DeadLetterFile):
        self.dead_letter = dead_letter

    async def __call__(self, refused: Sequence[tuple[Event | Reject, str]]) -> None:
        self.dead_letter.write(intake_records(refused))
        # The file is written (one fsync for every request of this loop turn) at the
        # next turn of the loop: yield once so that the answer comes after it.
        await asyncio.sleep(0)


class IntakeServer:
    """The intake: an aiohttp.web server handing accepted events to ``commit`` and
    refused pieces to ``refuse``.

    ``ready`` says why the process cannot take events now (None: it can), for /readyz.
    """

    def __init__(self, settings: ServeSettings, commit: Commit, refuse: Refuse,
                 metrics: Metrics, *, ready: ReadyCheck | None = None, result=None):
        self.settings = settings
        self.commit = commit
        self.refuse = refuse
        self.metrics = metrics
        self.ready = ready
        #: counts for the summary line (a RunResult: ``read``, ``rejected``), if given
        self.result = result
        self._ok = metrics.requests.labels("200")  # the per-request path: looked up once
        self.url: str | None = None
        self.metrics_url: str | None = None
        self._runners: list[web.AppRunner] = []
        self._draining = False
        self._store_failing = False  # the last commit failed (disk full, ...)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # connections that have not sent their first request yet: the timer closing them
        self._first_request: dict[object, asyncio.TimerHandle] = {}
        self._key = signing_key(settings.signing_secret) if settings.signing_secret else None
        if settings.username is not None:
            self._challenge = 'Basic realm="nwpipe", charset="UTF-8"'
        elif settings.bearer_token is not None:
            self._challenge = 'Bearer realm="nwpipe"'
        else:
            self._challenge = 'Signature realm="nwpipe"'
        self._basic: tuple[bytes, bytes] | None = None
        if settings.username is not None and settings.password is not None:
            self._basic = (settings.username.encode(), settings.password.encode())
        self._token = settings.bearer_token.encode() if settings.bearer_token else None

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``listen`` (and ``metrics_listen``); log where."""
        settings = self.settings
        app = web.Application(client_max_size=settings.max_body_bytes,
                              middlewares=[self._headers_arrived])
        app.router.add_route("*", settings.path, self._intake)
        if settings.metrics_listen is None:
            add_ops_routes(app, self.metrics, self.ready)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        ssl_context = settings.ssl_context()
        # keepalive_timeout: a connection idle or stalled between requests is closed
        runner = await start_site(app, settings.listen, ssl_context=ssl_context,
                                  keepalive_timeout=settings.read_timeout,
                                  handler_cancellation=False)
        self._runners.append(runner)
        self._guard_connections(runner)
        self.url = bound_url(runner, "https" if ssl_context else "http")
        log.info("serve: listening on %s%s", self.url, settings.path)
        if settings.username is None and settings.bearer_token is None and self._key is None:
            log.warning("serve: no username/password, bearer_token or signing_secret: "
                        "anyone who can reach %s may post events", self.url)
        if settings.metrics_listen is not None:
            ops = web.Application()
            add_ops_routes(ops, self.metrics, self.ready)
            ops_runner = await start_site(ops, settings.metrics_listen, what="metrics_listen")
            self._runners.append(ops_runner)
            self.metrics_url = bound_url(ops_runner)
            log.info("serve: metrics on %s/metrics", self.metrics_url)

    def _guard_connections(self, runner: web.AppRunner) -> None:
        """At most ``max_connections`` connections; each must send its first request's
        headers within ``read_timeout`` (later requests: aiohttp's keep-alive timeout,
        set to the same, closes a connection idle or stalled between requests)."""
        server = runner.server
        assert server is not None  # set up by start_site
        limit = self.settings.max_connections
        timeout = self.settings.read_timeout
        loop = asyncio.get_running_loop()
        made, lost = server.connection_made, server.connection_lost
        first_request = self._first_request

        def overdue(transport) -> None:
            transport.close()

        def connection_made(handler, transport) -> None:
            made(handler, transport)
            if len(server.connections) > limit:
                transport.abort()  # connection_lost removes it from the server's list
                return
            first_request[handler] = loop.call_later(timeout, overdue, transport)

        def connection_lost(handler, exc=None) -> None:
            timer = first_request.pop(handler, None)
            if timer is not None:
                timer.cancel()
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @web.middleware
    async def _headers_arrived(self, request: web.Request, handler):
        """A request's headers are complete: its connection's first-request timer ends."""
        if self._first_request:
            timer = self._first_request.pop(request.protocol, None)
            if timer is not None:
                timer.cancel()
        return await handler(request)

    def stop_accepting(self) -> None:
        """From now on POSTs are answered 503 with Retry-After (shutting down)."""
        self._draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no POST is being handled (its commit and answer done), at most
        ``timeout`` seconds; True when idle."""
        try:
            await within(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        """Stop listening and close every connection."""
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    # -- requests ----------------------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(request, 404, "no such path (events are posted to "
                           f"{self.settings.path})", log_it=False)

    async def _intake(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self._error(request, 405, f"method {printable(request.method)} not allowed: "
                               "POST events here", headers={"Allow": "POST"})
        if self._draining:
            return self._error(request, 503, "shutting down: try again later",
                               headers={"Retry-After": str(RETRY_AFTER)})
        self._inflight += 1
        self._idle.clear()
        try:
            return await self._post(request)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _post(self, request: web.Request) -> web.Response:
        settings = self.settings
        problem = self._auth_problem(request)
        if problem is not None:
            return self._error(request, 401, problem,
                               headers={"WWW-Authenticate": self._challenge})
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            return self._too_large(request)
        try:
            if request.content.is_eof():
                # the whole body came with the headers (a small event): no timer needed
                body = await self._read_body(request)
            else:
                body = await within(self._read_body(request), settings.read_timeout)
        except _BodyTooLarge:
            return self._too_large(request)
        except asyncio.TimeoutError:
            return self._error(request, 408, f"the body did not arrive within "
                               f"{settings.read_timeout:g} s", headers={"Connection": "close"})
        if self._key is not None:
            h = request.headers
            problem = verify(self._key, h.get("webhook-id"), h.get("webhook-timestamp"),
                             h.get("webhook-signature"), body)
            if problem is not None:
                return self._error(request, 401, f"invalid signature: {problem}",
                                   headers={"WWW-Authenticate": self._challenge})
        return await self._accept(request, body)

    def _auth_problem(self, request: web.Request) -> str | None:
        """Why the credentials are not right (None: they are, or none are configured).

        Compared in constant time, user name and password both always, so that the
        answer's timing does not tell which part was wrong.
        """
        if self._basic is None and self._token is None:
            return None
        header = request.headers.get("Authorization")
        if not header:
            return "credentials required"
        scheme, _, value = header.partition(" ")
        if self._basic is not None:
            if scheme.lower() != "basic":
                return "Basic credentials required"
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return "malformed Basic credentials"
            user, sep, password = decoded.partition(b":")
            user_ok = hmac.compare_digest(user, self._basic[0])
            password_ok = hmac.compare_digest(password, self._basic[1])
            return None if (sep and user_ok & password_ok) else "wrong user name or password"
        if scheme.lower() != "bearer":
            return "Bearer token required"
        token_ok = hmac.compare_digest(value.strip().encode(), self._token or b"")
        return None if token_ok else "wrong bearer token"

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)

    def _too_large(self, request: web.Request) -> web.Response:
        # Connection: close, so that the rest of a large body is not read for nothing
        return self._error(request, 413, f"body larger than max_body_bytes "
                           f"({self.settings.max_body_bytes} bytes)",
                           headers={"Connection": "close"})

    async def _accept(self, request: web.Request, body: bytes) -> web.Response:
        records = decode_body(body, f"serve {request.remote}", self.settings.max_body_bytes)
        metrics = self.metrics
        metrics.received.inc(len(records))
        if self.result is not None:
            self.result.read += len(records)
        if not records:
            return self._error(request, 400, "empty body: no event")
        events: list[Event] = []
        refused: list[tuple[int, Event | Reject, str]] = []
        for index, record in enumerate(records):
            if isinstance(record, Reject):
                refused.append((index, record, record.reason))
                continue
            problem = check_event(record.data)
            if problem is not None:
                refused.append((index, record, problem))
                continue
            events.append(record)
        if events:
            try:
                await self.commit(events)
            except QueueFull:
                return self._error(request, 503, "queue full: try again later",
                                   headers={"Retry-After": str(RETRY_AFTER)})
            except IntakeClosed as exc:
                return self._error(request, 503, f"{exc}: try again later",
                                   headers={"Retry-After": str(RETRY_AFTER)})
            except QueueError as exc:
                if not self._store_failing:  # one line per outage, not one per request
                    self._store_failing = True
                    log.error("serve: cannot store events: %s (answering 503 until it can)",
                              exc)
                return self._error(request, 503, "cannot store events now: try again later",
                                   headers={"Retry-After": str(RETRY_AFTER)}, log_it=False)
            if self._store_failing:
                self._store_failing = False
                log.warning("serve: storing events again")
            metrics.accepted.inc(len(events))
        if not refused:
            self._ok.inc()
            return _json(200, {"accepted": len(events)})
        return await self._refuse_some(request, len(events), refused)

    async def _refuse_some(self, request: web.Request, accepted: int,
                           refused: list[tuple[int, Event | Reject, str]]) -> web.Response:
        """Hand the refused pieces to ``refuse`` (dead letters) and answer 400 listing them."""
        for _index, item, _reason in refused:
            self.metrics.refused.labels("invalid" if isinstance(item, Reject)
                                        else "missing_field").inc()
        try:
            await self.refuse([(item, reason) for _index, item, reason in refused])
        except IntakeClosed as exc:
            return self._error(request, 503, f"{exc}: try again later",
                               headers={"Retry-After": str(RETRY_AFTER)})
        if self.result is not None:
            self.result.rejected += len(refused)
        listed: list[dict[str, object]] = [
            {"index": index, "error": reason}
            for index, _item, reason in refused[:MAX_LISTED_REFUSALS]]
        if accepted:
            error = f"{len(refused)} of {accepted + len(refused)} events refused"
        else:
            error = (refused[0][2] if len(refused) == 1
                     else f"all {len(refused)} events refused")
        answer = {"error": error, "accepted": accepted, "refused": listed}
        # one refusal is its own summary: name its reason once, not twice
        first = "" if error == refused[0][2] else f": first: {refused[0][2]}"
        self._log(request, 400, f"{error}{first} (dead-lettered)")
        self.metrics.requests.labels("400").inc()
        return _json(400, answer)

    def _error(self, request: web.Request, status: int, message: str, *,
               headers: dict[str, str] | None = None, log_it: bool = True) -> web.Response:
        if log_it:
            self._log(request, status, message)
        self.metrics.requests.labels(str(status)).inc()
        return _json(status, {"error": message}, headers)

    def _log(self, request: web.Request, status: int, message: str) -> None:
        # the messages are nwpipe's own words (never a credential); what a client sent
        # (the method) is stripped of control characters
        text = printable(message)
        log.warning("serve: %d to %s %s: %s", status, request.remote,
                    printable(request.method), text)
