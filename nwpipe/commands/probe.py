"""``nwpipe check --probe``: send one test event to each webhook (and syslog) output and
say, in plain words, whether it arrived and why not.

The test event has the shape of a real Netography event, so a receiver that validates
what it gets accepts it, and is marked as a test everywhere a person looks:

- ``id`` is ``nwpipe-probe-<random>`` and the delivery id (the ``webhook-id`` and
  ``Idempotency-Key`` headers) ``nwp_probe_<random>``: new on every probe, so a
  receiver that deduplicates never drops it and it never collides with a real alert;
- ``alerttype`` is ``end``, so tools that open something when an alert starts do not
  (the PagerDuty template resolves, which opens no incident);
- ``algorithm`` is ``nwpipe_probe``, ``severity`` ``low``, the summary says it is a
  connectivity test, addresses are documentation addresses (192.0.2.1, 198.51.100.1).

It is mapped as configured for the output (customer: the first of the output's
``customers``, else the first customer of its mapping table, else ``nwpipe-probe``),
sent once, without retries and whatever the output's ``when`` says.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

from nwpipe.errors import EventError
from nwpipe.net.httputil import printable
from nwpipe.outputs import Delivered, Delivery, Failed, Output, Result, Retry

__all__ = ["ProbeResult", "probe_event", "probe_output", "probe_outputs", "run_probes"]

PROBE_CUSTOMER = "nwpipe-probe"


@dataclass
class ProbeResult:
    """How one output answered the test event."""

    output: str
    ok: bool
    message: str
    status: int | None = None
    elapsed: float | None = None
    probed: bool = True

    def line(self) -> str:
        """``soc: OK (HTTP 200 in 35 ms)``; a plugin's message may quote its receiver,
        so control characters never reach the terminal."""
        return f"{self.output}: {printable(self.message)}"


def probe_event(customer: str = PROBE_CUSTOMER, now: float | None = None) -> dict:
    """A test event shaped like the vendor's, clearly marked as a test."""
    now = int(time.time() if now is None else now)
    summary = "nwpipe connectivity test (nwpipe check --probe); not a real alert"
    return {
        "alerttype": "end", "algorithm": "nwpipe_probe", "beta": False,
        "bypassdisplay": False, "bypassrule": False, "cachekey": "192.0.2.1 198.51.100.1",
        "categories": ["test"], "customer": customer,
        "description": summary, "dstinternal": "", "dstip": ["198.51.100.1"],
        "duration": 0, "end": now, "factorcount": "", "factors": "", "flowsrcname": "",
        "id": f"nwpipe-probe-{uuid.uuid4()}", "ignore": False, "input": "", "ipinfo": [],
        "ipinfocount": 0, "lasttimestamp": now,
        "metrics": {"bits": {"avg": 0.0, "max": 0, "min": 0, "sum": 0},
                    "count": {"flow": 0}},
        "name": "", "output": "", "rollupperiod": 300, "rulecount": 0, "rules": None,
        "severity": "low", "site": "", "srcinternal": "", "srcip": ["192.0.2.1"],
        "start": now, "summary": summary, "tag": "", "tags": ["nwpipe-probe"],
        "threshold": "", "timestamp": now, "track": "srcip dstip",
        "track_by": ["srcip", "dstip"], "updatecount": 1, "updateinterval": 300,
    }


def _customer_for(route) -> str:
    """A customer this output takes and has a mapping for."""
    output = route.output
    table = output.mapping if isinstance(output.mapping, dict) else {}
    candidates: Iterable[str] = sorted(output.customers) if output.customers else ()
    for customer in candidates:
        if route.mapper(customer) is not None:
            return customer
    if route.default_mapping is None:
        for customer in table:
            if customer != "default":
                return customer
    return next(iter(candidates), PROBE_CUSTOMER)


async def probe_output(route, output: Output, *, now: float | None = None) -> ProbeResult:
    """Open ``output``, send it the mapped test event once, close it, and explain."""
    name = route.name
    customer = _customer_for(route)
    event = probe_event(customer, now)
    mapper = route.mapper(customer)
    try:
        body = mapper(event) if mapper is not None else event
    except EventError as exc:
        return ProbeResult(name, False, f"the mapping failed on the test event: {exc}")
    delivery = Delivery(id=f"nwp_probe_{uuid.uuid4().hex}", body=body, event=event,
                        output=name, source="<probe>")
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
    # The webhook output keeps the last HTTP status and client error: the result says
    # how the send went, these say why.
    return explain(name, output, result, getattr(output, "last_status", None),
                   raised or getattr(output, "last_error", None), elapsed)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def explain(name: str, output: Output, result: Result, status: int | None,
            exception: BaseException | None, elapsed: float) -> ProbeResult:
    """The outcome of one probe as a plain-words ProbeResult."""
    config = getattr(output, "config", {}) or {}
    if isinstance(result, Delivered):
        if status is not None:
            return ProbeResult(name, True, f"OK (HTTP {status} in {_ms(elapsed)})", status,
                               elapsed)
        if config.get("protocol") == "udp":
            return ProbeResult(name, True, f"sent in {_ms(elapsed)} (UDP: the collector "
                                           "does not confirm arrival)", None, elapsed)
        return ProbeResult(name, True, f"OK (sent in {_ms(elapsed)})", None, elapsed)
    status = status if status is not None else getattr(result, "status", None)
    message = None
    if exception is not None and status is None:
        message = _explain_exception(exception, config)
    if message is None and status is not None:
        message = _explain_status(status, result, config)
    if message is None:
        message = _explain_reason(result.reason, config)
    return ProbeResult(name, False, message, status, elapsed)


_CERT_ADVICE = ("set ca_file to the CA bundle that signed it (or, only for a test "
                "receiver, skip_ssl_verification = true)")


def _explain_certificate(code: int | None, detail: str, host: str) -> str:
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


def _ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
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


def _explain_exception(exc: BaseException, config: dict) -> str | None:
    host = getattr(exc, "host", None)
    port = getattr(exc, "port", None)
    if host is None and config.get("url"):
        # the webhook's direct client names no host in its errors: the url does
        url = urlsplit(str(config["url"]))
        host = url.hostname
        port = url.port or {"https": 443, "http": 80}.get(url.scheme)
    host = host or config.get("host") or "the host"
    port = port or config.get("port")
    where = f"{host}:{port}" if port else str(host)
    tls_error = _ssl_error(exc)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        detail = tls_error.verify_message or tls_error.reason or str(tls_error)
        return _explain_certificate(tls_error.verify_code, detail, str(host))
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
        timeout = config.get("timeout")
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


def _auth_kind(config: dict) -> str | None:
    if config.get("username") is not None:
        return "basic"
    if config.get("bearer_token"):
        return "bearer"
    return None


def _explain_status(status: int, result: Result, config: dict) -> str:
    reason = getattr(result, "reason", "") or ""
    # the receiver's words: one line, without control characters (a CR or an escape
    # sequence could overwrite the verdict); the output has already hidden its secrets
    answer = printable(" ".join((getattr(result, "response", None) or "").split()))
    said = f" (the receiver said: {answer[:200]})" if answer else ""
    head = reason.split(":")[0] if reason.startswith("HTTP ") else f"HTTP {status}"
    auth = _auth_kind(config)
    if status == 401:
        if auth == "basic":
            return f"{head}: check username/password"
        if auth == "bearer":
            return f"{head}: check bearer_token"
        return f"{head}: the receiver wants credentials — set username and password " \
               "(or bearer_token)"
    if status == 403:
        if auth:
            return f"{head}: the credentials were refused for this URL — check them and " \
                   "what they are allowed to do"
        return f"{head}: the receiver refuses this request (credentials or an IP allow-list?)"
    if status == 404:
        return f"{head}: check the path in url"
    if status == 405:
        return f"{head}: check method (POST or PUT) and the path in url"
    if status == 407:
        return f"{head}: the proxy wants credentials"
    if status == 413:
        return f"{head}: the receiver finds the body too large"
    if status in (400, 415, 422):
        return f"{head}: the receiver rejected the test event's body — check the " \
               f"mapping and content_type{said}"
    if status == 429:
        return f"{head}: reachable, but rate-limited right now"
    if 500 <= status < 600:
        return f"{head}: reachable, but the receiver failed{said}"
    if 300 <= status < 400:
        return reason or f"{head}: redirected"
    return f"{reason or head}{said}"


def _explain_reason(reason: str, config: dict) -> str:
    """Results without a traced exception (syslog, plugins): their reason, in words."""
    lowered = reason.lower()
    if "certificate verify failed" in lowered:
        return _explain_certificate(None, reason, str(config.get("host") or "the host"))
    if "connection refused" in lowered:
        return reason.replace("connection refused by", "connection refused: nothing "
                              "listens on").replace(" (nothing listens on that UDP port)", "")
    return reason


def _probed(output_config) -> bool:
    """Webhook and syslog outputs (and plugins built on them) talk to a receiver."""
    from nwpipe_plugins.syslog import SyslogOutput
    from nwpipe_plugins.webhook import WebhookOutput

    return issubclass(output_config.cls, (WebhookOutput, SyslogOutput))


async def probe_outputs(config, router, *, now: float | None = None) -> list[ProbeResult]:
    """Probe every webhook and syslog output at once; the others are reported as not
    probed. Results come in the order of the config."""
    async def one(route) -> ProbeResult:
        if not _probed(route.output):
            return ProbeResult(route.name, True, f"not probed ({route.output.type} output)",
                               probed=False)
        return await probe_output(route, route.output.create(), now=now)

    return list(await asyncio.gather(*(one(route) for route in router.routes)))


def run_probes(config, router) -> list[ProbeResult]:
    """:func:`probe_outputs` in a fresh event loop (for the command line)."""
    return asyncio.run(probe_outputs(config, router))
