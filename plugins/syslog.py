"""The ``syslog`` output: RFC 5424 messages over UDP, TCP or TLS.

::

    [outputs.siem]
    type     = "syslog"
    host     = "siem.example.com"
    protocol = "tls"          # "udp" (default), "tcp" or "tls"
    format   = "cef"          # "json" (default), "cef" or "plain"

Each event is one RFC 5424 message, ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID -
MSG``: the priority combines ``facility`` with a severity taken from the event's
``severity`` (critical 2, high 3, medium 4, low 5, anything else 6), the timestamp is
the event's ``timestamp`` and MSGID its ``alerttype``. The message is

- ``json``: the mapped event as compact JSON (the output's mapping shapes it);
- ``cef``: ArcSight Common Event Format, built from the vendor's fields:
  ``CEF:0|Netography|Fusion|1.0|<algorithm>|<summary>|<0-10>|rt=... src=... dst=...``;
- ``plain``: one line of text; a mapping whose body is a JSON string (a body template
  like ``{{ severity ~ ": " ~ summary }}``) gives the text itself.

Over TCP and TLS messages are framed by octet counting (RFC 6587 3.4.1, RFC 5425), or
one per line with ``framing = "newline"``. TLS verifies the collector's certificate
unless ``skip_ssl_verification`` is set. A connection that fails or drops is a
``Retry``; the next send reconnects. Over UDP nothing confirms arrival: a collector that
is down is noticed (connection refused) only from the next message on.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import ssl
import time
from typing import Any

from nwpipe import Delivered, Delivery, Failed, Output, Result, Retry, Setting, hookimpl
from nwpipe.settings import positive_seconds
from nwpipe.net.tls import check_tls_files, client_context, tls_settings

log = logging.getLogger("nwpipe")

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13,
    "console": 14, "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}
#: the event's severity as a syslog severity (RFC 5424 6.2.1)
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5}
SYSLOG_SEVERITY_OTHER = 6
#: the event's severity on CEF's 0-10 scale
CEF_SEVERITY = {"critical": 10, "high": 8, "medium": 6, "low": 3}
CEF_SEVERITY_OTHER = 0
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
_BOM = b"\xef\xbb\xbf"
_TLS_ONLY = ("ca_file", "client_cert", "client_key")


# --- settings checks ----------------------------------------------------------------------

def _header_field(what: str, limit: int):
    """A check for an RFC 5424 header field: printable ASCII, no spaces, bounded."""
    def check(value: str) -> str:
        if not value or len(value) > limit or any(not 33 <= ord(c) <= 126 for c in value):
            raise ValueError(f"{what} must be 1 to {limit} printable ASCII characters "
                             "without spaces")
        return value
    return check


def _check_host(value: str) -> str:
    value = value.strip()
    if not value or any(c.isspace() for c in value) or "/" in value:
        raise ValueError("host must be a host name or an IP address")
    return value


def _check_port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError("port must be between 1 and 65535")
    return value


def _check_facility(value: str | int) -> int:
    if isinstance(value, str):
        name = value.strip().lower()
        if name not in FACILITIES:
            from nwpipe.settings import did_you_mean
            raise ValueError(f"unknown facility {value!r}{did_you_mean(name, FACILITIES)}; "
                             f"use a name (user, daemon, auth, local0 ... local7) or 0-23")
        return FACILITIES[name]
    if not 0 <= value <= 23:
        raise ValueError("facility must be a name or a number from 0 to 23")
    return value





def _sanitize(value: Any, limit: int) -> str:
    """A value as an RFC 5424 header field: printable ASCII, "-" when empty."""
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(value)[:limit])
    return text or "-"


# --- message formats --------------------------------------------------------------------------

def _severity_name(event: dict) -> str:
    value = event.get("severity")
    return value.strip().lower() if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return value
    return None


def rfc5424_timestamp(seconds: float) -> str:
    """Epoch seconds as an RFC 5424 TIMESTAMP in UTC, with milliseconds when not whole."""
    whole = int(seconds)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    millis = int(round((seconds - whole) * 1000))
    if millis and millis < 1000:
        return f"{text}.{millis:03d}Z"
    return text + "Z"


def _addresses(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [str(v) for v in value if v not in (None, "")]


def _joined(value: Any) -> str:
    return ",".join(_addresses(value))


def cef_header_escape(value: Any) -> str:
    """A CEF header field: backslash and pipe escaped, line breaks as spaces."""
    text = "" if value is None else str(value)
    return (text.replace("\\", "\\\\").replace("|", "\\|")
            .replace("\r\n", " ").replace("\n", " ").replace("\r", " "))


def cef_value_escape(value: Any) -> str:
    """A CEF extension value: backslash and equals escaped, line breaks as \\n and \\r."""
    text = "" if value is None else str(value)
    return (text.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r"))


def _ip_extension(prefix_v4: str, prefix_v6: str, label: str, value: Any) -> list[tuple[str, Any]]:
    """The first address of a list as ``src``/``dst`` (IPv4) or ``c6a2``/``c6a3`` (IPv6)."""
    for address in _addresses(value):
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            continue
        if parsed.version == 4:
            return [(prefix_v4, address)]
        return [(f"{prefix_v6}Label", label), (prefix_v6, address)]
    return []


def cef_message(event: dict) -> str:
    """The event in ArcSight Common Event Format (CEF:0), from the vendor's field names."""
    severity = CEF_SEVERITY.get(_severity_name(event), CEF_SEVERITY_OTHER)
    algorithm = event.get("algorithm") or "alert"
    name = event.get("summary") or event.get("description") or algorithm
    header = "|".join(("CEF:0", "Netography", "Fusion", "1.0", cef_header_escape(algorithm),
                       cef_header_escape(name), str(severity)))
    extension: list[tuple[str, Any]] = []
    start = _number(event.get("start"))
    moment = start or _number(event.get("timestamp"))
    if moment:
        extension.append(("rt", int(moment * 1000)))
    if start:
        extension.append(("start", int(start * 1000)))
    end = _number(event.get("end"))
    if end:
        extension.append(("end", int(end * 1000)))
    extension += _ip_extension("src", "c6a2", "Source IPv6 Address", event.get("srcip"))
    extension += _ip_extension("dst", "c6a3", "Destination IPv6 Address", event.get("dstip"))
    metrics = event.get("metrics")
    count = metrics.get("count") if isinstance(metrics, dict) else None
    flows = count.get("flow") if isinstance(count, dict) else None
    extension += [
        ("externalId", event.get("id")),
        ("msg", event.get("description")),
        ("cat", _joined(event.get("categories"))),
        ("cnt", flows if isinstance(flows, int) and not isinstance(flows, bool) else None),
        ("cs1Label", "alertType"), ("cs1", event.get("alerttype")),
        ("cs2Label", "customer"), ("cs2", event.get("customer")),
        ("cs3Label", "srcIps"), ("cs3", _joined(event.get("srcip"))),
        ("cs4Label", "dstIps"), ("cs4", _joined(event.get("dstip"))),
        ("cs5Label", "tags"), ("cs5", _joined(event.get("tags"))),
        ("cn1Label", "updateCount"), ("cn1", event.get("updatecount")),
    ]
    parts = []
    for i, (key, value) in enumerate(extension):
        if key.endswith("Label"):
            continue  # written with its value, and only when there is one
        if value in (None, "") or isinstance(value, (dict, list, bool)):
            continue
        if i > 0 and extension[i - 1][0] == f"{key}Label":
            parts.append(f"{key}Label={cef_value_escape(extension[i - 1][1])}")
        parts.append(f"{key}={cef_value_escape(value)}")
    return header + "|" + " ".join(parts)


def plain_message(body: Any, event: dict) -> str:
    """One line of text: the body itself when the mapping made it a string, else a
    summary of the event."""
    if isinstance(body, str):
        return body
    severity = event.get("severity") or "unknown"
    parts = [f"{severity} {event.get('alerttype') or 'alert'} {event.get('algorithm') or ''}"
             .rstrip() + ":", str(event.get("summary") or event.get("description") or "")]
    details = [f"customer={event.get('customer')}"]
    for label, key in (("src", "srcip"), ("dst", "dstip")):
        if _addresses(event.get(key)):
            details.append(f"{label}={_joined(event.get(key))}")
    details.append(f"id={event.get('id')}")
    return " ".join(p for p in parts if p) + " (" + " ".join(details) + ")"


# --- the output ---------------------------------------------------------------------------

class SyslogOutput(Output):
    """Send each event as an RFC 5424 syslog message over UDP, TCP or TLS."""

    settings = {
        "host": Setting(str, required=True, check=_check_host,
                        help="the syslog collector's host name or IP address"),
        "port": Setting(int, default=None, check=_check_port,
                        help="default 514 (udp, tcp) or 6514 (tls)"),
        "protocol": Setting(str, default="udp", choices=("udp", "tcp", "tls"),
                            help="transport"),
        "framing": Setting(str, default=None, choices=("octet-counting", "newline"),
                           help="tcp/tls: octet counting (RFC 6587, default) or one per line"),
        "format": Setting(str, default="json", choices=("json", "cef", "plain"),
                          help="the message: mapped JSON, CEF, or a line of text"),
        "facility": Setting((str, int), default="user", check=_check_facility,
                            help="a name (user, daemon, local0 ... local7) or 0-23"),
        "app_name": Setting(str, default="nwpipe", check=_header_field("app_name", 48),
                            help="APP-NAME of each message"),
        "hostname": Setting(str, default=None, check=_header_field("hostname", 255),
                            help="HOSTNAME of each message (default: this machine's name)"),
        "bom": Setting(bool, default=False,
                       help="start each message with the UTF-8 byte-order mark of RFC 5424"),
        "timeout": Setting(float, default=10.0, check=positive_seconds,
                           help="seconds to connect, and to hand over a batch"),
        **tls_settings("the collector", prefix="tls: "),
    }
    concurrency = 1          # one connection: messages keep their order
    batch_max_events = 100   # over TCP a batch is one write

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """A key needs its certificate, and with TLS the files must load."""
        if config.get("client_key") and not config.get("client_cert"):
            raise ValueError("client_key is set but client_cert is not")
        if (config.get("protocol") or "udp") == "tls":
            check_tls_files(config)

    def __init__(self, name: str, config: dict[str, Any]):
        config = {**{key: s.default for key, s in self.settings.items()}, **config}
        super().__init__(name, config)
        self._host = config["host"]
        self._protocol = config["protocol"]
        self._port = config["port"] or DEFAULT_PORTS[self._protocol]
        self._where = f"{self._host}:{self._port}"
        self._format = config["format"]
        facility = config["facility"]
        self._facility = _check_facility(facility) if isinstance(facility, str) else facility
        self._framing = config["framing"] or "octet-counting"
        self._newline = self._protocol != "udp" and self._framing == "newline"
        hostname = config["hostname"] or _sanitize(socket.gethostname(), 255)
        # Everything between the timestamp and MSGID is the same for every message.
        self._middle = f" {hostname} {config['app_name']} {os.getpid()} "
        self._bom = _BOM if config["bom"] else b""
        self._timeout = float(config["timeout"])
        self._ssl = client_context(config) if self._protocol == "tls" else None
        self._sock: socket.socket | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    # -- messages --

    def message(self, delivery: Delivery) -> bytes:
        """The RFC 5424 message for one delivery, without framing."""
        event = delivery.event
        severity = SYSLOG_SEVERITY.get(_severity_name(event), SYSLOG_SEVERITY_OTHER)
        moment = _number(event.get("timestamp")) or time.time()
        if moment >= 1e11:  # milliseconds
            moment = moment / 1000
        msgid = _sanitize(event.get("alerttype") or "", 32)
        header = (f"<{self._facility * 8 + severity}>1 {rfc5424_timestamp(moment)}"
                  f"{self._middle}{msgid} - ")
        if self._format == "json":
            text = delivery.body_json()
        elif self._format == "cef":
            text = cef_message(event).encode("utf-8", "replace")
        else:
            line = plain_message(delivery.body, event)
            if self._newline:
                # one message per line: a line break inside would split it in two
                line = line.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
            text = line.encode("utf-8", "replace")
        return header.encode() + self._bom + text

    def frame(self, message: bytes) -> bytes:
        """The message framed for a TCP/TLS stream."""
        if self._newline:
            return message + b"\n"
        return str(len(message)).encode() + b" " + message

    # -- lifecycle --

    async def open(self) -> None:
        """Nothing to do yet: the first send connects (so a collector that is down at
        start-up is retried like any other outage)."""
        if self._protocol == "tls" and self.config["skip_ssl_verification"]:
            log.warning("outputs.%s: skip_ssl_verification is on: the TLS certificate of "
                        "%s is NOT verified", self.name, self._where)
        for name in self.ignored_settings():
            log.warning("outputs.%s: %s is ignored with protocol = \"%s\"", self.name, name,
                        self._protocol)

    def ignored_settings(self) -> list[str]:
        """Settings that do not apply to this protocol (they may come from [defaults],
        shared with outputs that use them, so they are not an error)."""
        names = []
        if self._protocol != "tls":
            names += [n for n in (*_TLS_ONLY, "skip_ssl_verification") if self.config.get(n)]
        if self._protocol == "udp" and self.config.get("framing"):
            names.append("framing")
        return names

    async def close(self) -> None:
        """Close the socket or connection."""
        await self._disconnect()

    async def probe(self, delivery: Delivery) -> ProbeResult:
        """``nwpipe check --probe``: see probe_syslog at the end of this module."""
        return await probe_syslog(self, delivery)

    def describe(self) -> str:
        """``syslog tls siem:6514 (cef, facility 16, octet-counting framing)``."""
        details = [self._format, f"facility {self._facility}"]
        if self._protocol != "udp":
            details.append(f"{self._framing} framing")
        ignored = self.ignored_settings()
        if ignored:
            details.append(f"ignored: {', '.join(ignored)}")
        if self._protocol == "tls":
            if self.config["skip_ssl_verification"]:
                details.append("TLS NOT VERIFIED")
            elif self.config["ca_file"]:
                details.append(f"ca_file {self.config['ca_file']}")
            if self.config["client_cert"]:
                details.append("client certificate")
        return f"syslog {self._protocol} {self._where} ({', '.join(details)})"

    # -- sending --

    async def send(self, batch: list[Delivery]) -> Result:
        """Send every message of the batch; Retry when the collector cannot be reached."""
        if not batch:
            return Delivered()
        messages = [self.message(d) for d in batch]
        if self._protocol == "udp":
            return await self._send_udp(messages)
        return await self._send_stream(messages)

    async def _send_udp(self, messages: list[bytes]) -> Result:
        if self._sock is None:
            try:
                infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                    self._host, self._port, type=socket.SOCK_DGRAM), self._timeout)
            except socket.gaierror as exc:
                return Retry(f"cannot resolve host {self._host!r}: {exc.strerror}")
            except asyncio.TimeoutError:
                return Retry(f"timed out resolving host {self._host!r}")
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                sock.connect(address)  # fixes the peer; sends no packet
            except OSError as exc:
                sock.close()
                return Retry(f"cannot send to {self._where}: {exc.strerror or exc}")
            self._sock = sock
        for message in messages:
            try:
                self._sock.send(message)
            except ConnectionRefusedError:
                # an earlier datagram was answered with "port unreachable"
                await self._disconnect()
                return Retry(f"connection refused by {self._where} (nothing listens on "
                              "that UDP port)")
            except BlockingIOError:
                return Retry("the UDP send buffer is full", after=0.05)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    return Failed(f"a message of {len(message)} bytes is too large for UDP; "
                                  "use protocol = \"tcp\" or a smaller mapping")
                await self._disconnect()
                return Retry(f"cannot send to {self._where}: {exc.strerror or exc}")
        return Delivered()

    async def _send_stream(self, messages: list[bytes]) -> Result:
        writer = self._writer
        if writer is not None and (writer.is_closing() or self._reader.at_eof()):
            # the collector closed the connection since the last send
            await self._disconnect()
            writer = None
        if writer is None:
            failure = await self._connect()
            if failure is not None:
                return failure
            writer = self._writer
        try:
            writer.write(b"".join([self.frame(m) for m in messages]))
            await asyncio.wait_for(writer.drain(), self._timeout)
        except asyncio.TimeoutError:
            await self._disconnect()
            return Retry(f"timed out after {self._timeout:g} s writing to {self._where}")
        except (OSError, ConnectionError, ssl.SSLError) as exc:
            await self._disconnect()
            return Retry(f"connection to {self._where} lost: {_reason(exc)}")
        return Delivered()

    async def _connect(self) -> Result | None:
        """Open the TCP or TLS connection; a Result when that failed."""
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None),
                self._timeout)
        except asyncio.TimeoutError:
            return Retry(f"timed out after {self._timeout:g} s connecting to {self._where}")
        except ssl.SSLCertVerificationError as exc:
            detail = exc.verify_message or exc.reason or str(exc)
            return Failed(f"TLS certificate verify failed for {self._where}: {detail} "
                          "(set ca_file to the collector's CA bundle)")
        except ssl.SSLError as exc:
            if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
                return Retry(f"{self._where} closed the connection during the TLS handshake")
            detail = exc.reason or str(exc)
            if detail == "WRONG_VERSION_NUMBER":
                detail += " (does the collector speak TLS on this port?)"
            return Failed(f"TLS error with {self._where}: {detail}")
        except socket.gaierror as exc:
            return Retry(f"cannot resolve host {self._host!r}: {exc.strerror}")
        except ConnectionRefusedError:
            return Retry(f"connection refused by {self._where}")
        except OSError as exc:
            return Retry(f"cannot connect to {self._where}: {_reason(exc)}")
        return None

    async def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, ConnectionError, ssl.SSLError, asyncio.TimeoutError):
                pass  # already broken: nothing more to release


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@hookimpl
def register_outputs(register):
    """Register the ``syslog`` output type."""
    register("syslog", SyslogOutput)


# -- `nwpipe check --probe` ----------------------------------------------------------------
# SyslogOutput.probe calls this: one test message, then the answer in plain words.

from nwpipe.outputs import ProbeResult  # noqa: E402 - the probe block keeps its imports
from nwpipe.probing import explain_exception, explain_reason, ms, send_once  # noqa: E402


async def probe_syslog(output: SyslogOutput, delivery: Delivery) -> ProbeResult:
    """Send the test message once and explain the outcome (see nwpipe.probing)."""
    result, raised, elapsed = await send_once(output, delivery)
    if isinstance(result, Delivered):
        if output.config["protocol"] == "udp":
            return ProbeResult(True, f"sent in {ms(elapsed)} (UDP: the collector does not "
                                     "confirm arrival)", elapsed=elapsed)
        return ProbeResult(True, f"OK (sent in {ms(elapsed)})", elapsed=elapsed)
    host = output.config["host"]
    message = None
    if raised is not None:
        message = explain_exception(raised, host, output.config.get("port"),
                                    output.config.get("timeout"))
    return ProbeResult(False, message or explain_reason(result.reason, host), elapsed=elapsed)
