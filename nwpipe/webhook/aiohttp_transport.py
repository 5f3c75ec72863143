"""The webhook transport through an aiohttp session: for a proxy, ``trust_env`` and
followed redirects (aiohttp is imported only when an output uses it)."""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from yarl import URL

from nwpipe.net import http1
from nwpipe.webhook.redaction import CREDENTIAL_HEADER
from nwpipe.webhook.transport import DRAIN_LIMIT, RESPONSE_SNIPPET, RedirectRefused

if TYPE_CHECKING:
    import aiohttp

MAX_REDIRECTS = 5
#: headers that stay on a redirect to another origin although their names look like
#: credentials: they identify the message, so the receiver can deduplicate it
_IDENTITY_HEADERS = frozenset({"webhook-id", "idempotency-key"})
#: headers that prove the request came from us: never sent to another origin
_SIGNATURE_HEADERS = frozenset({"webhook-signature", "webhook-timestamp"})
_FOLLOWED = (301, 302, 307, 308)


class AiohttpTransport:
    """Requests through one aiohttp session (keep-alive pool sized to the concurrency)."""

    def __init__(self, method: str, *, ssl_context: ssl.SSLContext | None, limit: int,
                 timeout: float, proxy: str | None, trust_env: bool, follow_redirects: bool):
        self._method = method
        self._context = ssl_context
        self._limit = limit
        self._timeout = timeout
        self._proxy = proxy
        self._trust_env = trust_env
        self._follow = follow_redirects
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the session."""
        if self._session is not None:
            return
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self._limit, ssl=self._context if self._context is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            # events for different customers share this session: never carry cookies
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=self._trust_env,
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def prepare(self, url: URL, headers: dict[str, str]) -> tuple[URL, dict[str, str]]:
        """``url`` and ``headers`` as they are: aiohttp encodes per request."""
        return url, headers

    async def send(self, prepared: tuple[URL, dict[str, str]], extra: list[tuple[str, str]],
                   body: bytes) -> http1.Response:
        """Send one request, following redirects when configured."""
        session = self._session
        if session is None:
            raise RuntimeError("WebhookOutput.send() called before open()")
        url, shared = prepared
        headers = shared.copy()
        headers.update(extra)
        for _hop in range(MAX_REDIRECTS + 1):
            async with session.request(self._method, url, data=body, headers=headers,
                                       proxy=self._proxy, allow_redirects=False) as resp:
                if resp.version is not None and resp.version.major != 1:
                    # the lean client refuses these too: no HTTP/2 syntax on this connection
                    raise http1.ProtocolError(
                        "not an HTTP/1.x status line: "
                        + repr(f"HTTP/{resp.version.major}.{resp.version.minor} "
                               f"{resp.status} {resp.reason or ''}".rstrip()[:40]))
                status = resp.status
                if self._follow and status in _FOLLOWED:
                    target = _redirect_target(url, resp.headers.get("Location"))
                    await _drain(resp)
                    if target.origin() != url.origin():
                        headers = _cross_origin_headers(headers)
                    url = target
                    continue
                if 200 <= status < 300 or (self._follow and status == 303):
                    if _framed(resp):
                        await _drain(resp)
                    # else delimited by the server closing: not waited for, the
                    # connection is not reused (the context manager releases it)
                    data = b""
                else:
                    data = await _read_some(resp, RESPONSE_SNIPPET)
                return http1.Response(status, resp.reason or "",
                                      {k.lower(): v for k, v in resp.headers.items()}, data)
        raise RedirectRefused(f"too many redirects (more than {MAX_REDIRECTS})")


def _redirect_target(url: URL, location: str | None) -> URL:
    """Where a followed redirect goes; :class:`RedirectRefused` says why not."""
    if not location:
        raise RedirectRefused("redirect without a Location header")
    try:
        target = url.join(URL(location))
    except ValueError:
        raise RedirectRefused("redirect to an invalid Location") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise RedirectRefused("redirect to an unsupported location", location)
    if url.scheme == "https" and target.scheme == "http":
        raise RedirectRefused("refusing a redirect from https to http", location)
    return target


def _cross_origin_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` for a redirect to another origin: credentials (by name, as in
    messages) and the signature are for the configured receiver only."""
    kept = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _SIGNATURE_HEADERS or (
                CREDENTIAL_HEADER.search(name) and lower not in _IDENTITY_HEADERS):
            continue
        kept[name] = value
    return kept


def _framed(resp: aiohttp.ClientResponse) -> bool:
    """True when the body has a length (Content-Length or chunked), so reading it to
    its end keeps the connection; else it ends only when the server closes."""
    headers = resp.headers
    return ("Content-Length" in headers
            or "chunked" in headers.get("Transfer-Encoding", "").lower())


async def _read_some(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body: less when it ends sooner, and what arrived
    when it is cut short (the status already said how it went)."""
    import aiohttp

    chunks = []
    size = 0
    try:
        while size < limit:
            chunk = await resp.content.read(limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
        resp.close()  # the connection is broken: never reuse it
    return b"".join(chunks)


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read a (short) response to its end so the connection goes back to the pool."""
    await _read_some(resp, DRAIN_LIMIT)
