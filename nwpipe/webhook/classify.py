"""The result of one webhook request: a receiver's answer or a client error as
Delivered, Retry or Failed, in words that are safe to show (no control characters,
no secrets)."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import sys
from urllib.parse import unquote

from yarl import URL

from nwpipe.net import http1
from nwpipe.net.httputil import parse_retry_after, snippet, status_reason
from nwpipe.outputs import Failed, Result, Retry
from nwpipe.webhook.redaction import Redactor
from nwpipe.webhook.transport import RESPONSE_SNIPPET, RedirectRefused

RETRY_STATUSES = frozenset({408, 429})
#: how much of a Location a message shows
_LOCATION_SHOWN = 200


# aiohttp is imported only when an output needs it (a proxy, followed redirects): it
# takes longer to import than the rest of nwpipe together.

class _NotRaised(Exception):
    """Stands in for aiohttp's exception classes while aiohttp is not imported."""


class _AiohttpAbsent:
    def __getattr__(self, name: str) -> type[Exception]:
        return _NotRaised


def _aiohttp_errors():
    """The aiohttp module if it is imported, else a stand-in whose exception classes
    nothing is an instance of (no aiohttp error can happen before it is imported)."""
    return sys.modules.get("aiohttp") or _AiohttpAbsent()


class Classifier:
    """Classifies the answers and errors of one webhook output."""

    def __init__(self, redactor: Redactor, *, timeout: float, follow_redirects: bool):
        self.redactor = redactor
        self._timeout = timeout
        self._follow_redirects = follow_redirects

    def answer(self, answer: http1.Response) -> Result:
        """The result of a non-2xx answer (redirects here are not followed)."""
        say = self.redactor.say
        status = answer.status
        # the body is kept with its lines (the dead-letter ``response``), without
        # control characters or secrets: a receiver may echo the URL's token
        text = say(snippet(answer.body, RESPONSE_SNIPPET), keep_lines=True)
        # a non-standard status brings the receiver's phrase, which may echo the
        # request line and so a token in the URL
        reason = say(status_reason(status, answer.reason))
        if status in RETRY_STATUSES or 500 <= status < 600:
            return Retry(reason, after=parse_retry_after(answer.headers.get("retry-after")),
                         status=status, response=text)
        if 300 <= status < 400:
            location = answer.headers.get("location")
            where = f" to {self.show_location(location)}" if location else ""
            hint = "" if self._follow_redirects else " (set follow_redirects = true to follow)"
            return Failed(f"{reason}: redirect{where} not followed{hint}",
                          status=status, response=text)
        return Failed(reason, status=status, response=text)

    def show_location(self, location: str) -> str:
        """A Location for a message: origin and path only (a query may carry a token),
        decoded, without control characters, redacted."""
        cut = location.split("?", 1)[0].split("#", 1)[0]
        try:
            parsed = URL(cut)
            shown = (str(parsed.origin()) if parsed.absolute else "") + parsed.path
        except ValueError:
            shown = unquote(cut)
        # redact before cutting: a cut could leave part of a secret unmatched
        return self.redactor.say(shown)[:_LOCATION_SHOWN]

    def error(self, exc: BaseException, url: URL) -> Result:
        """Turn a client exception into Retry (the network) or Failed (the config)."""
        aiohttp = _aiohttp_errors()
        say = self.redactor.say
        where = f"{url.host}:{url.port}"
        if isinstance(exc, RedirectRefused):
            shown = f" '{self.show_location(exc.location)}'" if exc.location else ""
            return Failed(f"{exc}{shown}")
        if isinstance(exc, (aiohttp.ClientConnectorCertificateError,
                            ssl.SSLCertVerificationError)):
            cert_error = getattr(exc, "certificate_error", exc)
            detail = getattr(cert_error, "verify_message", None) or str(cert_error)
            return Failed(f"TLS certificate verify failed for {where}: {detail} "
                          "(set ca_file to the receiver's CA bundle)")
        if isinstance(exc, asyncio.TimeoutError):
            return Retry(f"timed out after {self._timeout:g} s ({where})")
        ssl_error = _ssl_error(exc)
        if ssl_error is not None and not isinstance(
                ssl_error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
            # a TLS alert or handshake failure: a certificate or protocol setup problem
            # that a retry will not fix
            detail = getattr(ssl_error, "reason", None) or ssl_error.strerror or str(ssl_error)
            if detail == "WRONG_VERSION_NUMBER":
                detail += " (does the receiver speak plain http?)"
            return Failed(f"TLS error with {where}: {detail}")
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return Retry(f"cannot connect to proxy {exc.host}:{exc.port}: "
                         f"{_os_reason(exc.os_error)}")
        if isinstance(exc, http1.ServerDisconnected):
            return Retry(f"{where} {exc}")
        if isinstance(exc, http1.ProtocolError):
            # the message may quote what the receiver sent
            return Retry(say(f"bad HTTP response from {where}: {exc}"))
        if isinstance(exc, (aiohttp.ClientConnectorError, http1.ConnectError)):
            os_error = exc.os_error
            if isinstance(os_error, socket.gaierror):
                return Retry(f"cannot resolve host {url.host!r}: {_os_reason(os_error)}")
            if os_error.errno == errno.ECONNREFUSED or isinstance(os_error, ConnectionRefusedError):
                return Retry(f"connection refused to {where}")
            return Retry(f"cannot connect to {where}: {_os_reason(os_error)}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return Retry(f"{where} closed the connection without a response")
        if isinstance(exc, (ConnectionResetError, aiohttp.ClientConnectionResetError)) or (
                isinstance(exc, OSError) and exc.errno == errno.ECONNRESET):
            return Retry(f"connection reset by {where}")
        if isinstance(exc, aiohttp.ClientResponseError):
            # str() of this error includes the full URL, which may hold a token; the
            # message may quote what the receiver sent
            return Retry(say(f"bad HTTP response from {where}: {_aiohttp_message(exc)}"))
        if isinstance(exc, aiohttp.InvalidURL):
            return Failed(f"invalid URL for {where}")
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return Retry(say(f"{type(exc).__name__} talking to {where}: {exc}"))
        return Failed(say(f"{type(exc).__name__}: {exc}"))


def _aiohttp_message(exc) -> str:
    """aiohttp's parser error in the lean client's words where they differ."""
    message = str(exc.message)
    if "\\x00" in message:
        return "NUL in a response header"
    return message


def _ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ssl.SSLError behind ``exc`` (aiohttp wraps them), if any."""
    aiohttp = _aiohttp_errors()
    seen = 0
    while exc is not None and seen < 5:
        # aiohttp's ClientConnectorSSLError is an SSLError too, but without the
        # details: look at the error it wraps first
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ssl.SSLError):
            return exc.os_error
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, aiohttp.ClientError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__
