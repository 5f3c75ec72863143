"""Helpers for an output's ``probe`` (``nwpipe check --probe``): send once, then say in
plain words why a receiver was not reached.

An output that talks to a receiver implements ``async def probe(self, delivery)`` and
returns a :class:`~nwpipe.outputs.ProbeResult`; most do it with :func:`send_once` and
these explanations::

    async def probe(self, delivery):
        result, error, elapsed = await send_once(self, delivery)
        if isinstance(result, Delivered):
            return ProbeResult(True, f"OK (sent in {ms(elapsed)})", elapsed=elapsed)
        message = explain_exception(error, self.host, self.port) if error else None
        return ProbeResult(False, message or explain_reason(result.reason, self.host),
                           elapsed=elapsed)
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time

from nwpipe.outputs import Delivery, Failed, Output, Result, Retry

__all__ = ["send_once", "ms", "explain_exception", "explain_certificate", "explain_reason"]

_CERT_ADVICE = ("set ca_file to the CA bundle that signed it (or, only for a test "
                "receiver, skip_ssl_verification = true)")


async def send_once(output: Output,
                    delivery: Delivery) -> tuple[Result, BaseException | None, float]:
    """Open ``output``, send it ``delivery`` once (no retries), close it.

    Returns the result, the exception that ended the send (None when ``send`` returned)
    and the seconds it took. Exceptions are turned into results as the delivery engine
    turns them (``OSError`` and timeouts: Retry; anything else: Failed).
    """
    raised: BaseException | None = None
    started = time.monotonic()
    try:
        try:
            await output.open()
            result: Result = await output.send([delivery])
        except (OSError, asyncio.TimeoutError) as exc:
            result = Retry(f"{type(exc).__name__}: {exc}")
            raised = exc
        except Exception as exc:  # noqa: BLE001 - a plugin bug is one line of the report
            result = Failed(f"{type(exc).__name__}: {exc}")
    finally:
        elapsed = time.monotonic() - started
        try:
            await output.close()
        except Exception:  # noqa: BLE001 - closing cannot change the answer
            pass
    return result, raised, elapsed


def ms(seconds: float) -> str:
    """``35 ms``."""
    return f"{seconds * 1000:.0f} ms"


def explain_certificate(code: int | None, detail: str, host: str) -> str:
    """A certificate the client refused, with what to change."""
    lowered = detail.lower()
    if code == 62 or "hostname mismatch" in lowered or "ip address mismatch" in lowered:
        return (f"certificate verify failed: the certificate is not valid for {host} "
                "— use the host name it was issued for in the url")
    if code == 10 or "expired" in lowered:
        return "certificate verify failed: the server's certificate has expired"
    if code in (18, 19) or "self-signed" in lowered or "self signed" in lowered:
        return (f"certificate verify failed: the server's certificate is self-signed "
                f"— {_CERT_ADVICE}")
    return (f"certificate verify failed: the server's certificate is not trusted "
            f"({detail}) — {_CERT_ADVICE}")


def _find_ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ssl.SSLError behind ``exc`` (client libraries wrap them), if any."""
    seen = 0
    while exc is not None and seen < 6:
        os_error = getattr(exc, "os_error", None)
        if isinstance(os_error, ssl.SSLError):
            return os_error
        certificate_error = getattr(exc, "certificate_error", None)
        if isinstance(certificate_error, ssl.SSLError):
            return certificate_error
        if isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def explain_exception(exc: BaseException, host: str | None, port: int | None,
                      timeout: float | None = None) -> str | None:
    """A network or TLS failure in plain words, or None when it is none of the known
    kinds. ``host`` and ``port`` name the receiver when the exception does not."""
    host = getattr(exc, "host", None) or host or "the host"
    port = getattr(exc, "port", None) or port
    where = f"{host}:{port}" if port else str(host)
    tls_error = _find_ssl_error(exc)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        detail = tls_error.verify_message or tls_error.reason or str(tls_error)
        return explain_certificate(tls_error.verify_code, detail, str(host))
    if tls_error is not None:
        reason = getattr(tls_error, "reason", None) or str(tls_error)
        if reason == "WRONG_VERSION_NUMBER":
            return ("TLS handshake failed: the server does not speak TLS on this port "
                    "— use http:// or the port where it serves https")
        if isinstance(tls_error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return (f"TLS handshake failed: {where} closed the connection (does it want a "
                    "client certificate, or another TLS version?)")
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, asyncio.TimeoutError):
        within = f" within {timeout:g} s" if isinstance(timeout, (int, float)) else ""
        return f"no answer{within} — is the host reachable (firewall, proxy)?"
    os_error = getattr(exc, "os_error", None) or (exc if isinstance(exc, OSError) else None)
    if isinstance(os_error, socket.gaierror):
        return (f"cannot resolve host {host!r}: {os_error.strerror} — check the host name "
                "in the url")
    if isinstance(os_error, ConnectionRefusedError) or (
            isinstance(os_error, OSError) and os_error.errno == errno.ECONNREFUSED):
        return f"connection refused: nothing listens on {where}"
    if isinstance(os_error, OSError) and os_error.errno in (errno.EHOSTUNREACH,
                                                            errno.ENETUNREACH):
        return f"cannot reach {where}: {os_error.strerror}"
    if type(exc).__name__ == "ServerDisconnectedError":
        return "the server closed the connection without answering"
    return None


def explain_reason(reason: str, host: str | None) -> str:
    """A result's reason (no exception at hand) in plain words where it says a known kind."""
    lowered = reason.lower()
    if "certificate verify failed" in lowered:
        return explain_certificate(None, reason, str(host or "the host"))
    if "connection refused" in lowered:
        return reason.replace("connection refused by", "connection refused: nothing "
                              "listens on").replace(" (nothing listens on that UDP port)", "")
    return reason
