"""The ``syslog`` output: RFC 5424 messages over UDP, TCP, TLS or RELP.

::

    [outputs.siem]
    type     = "syslog"
    host     = "siem.example.com"
    protocol = "tls"          # "udp" (default), "tcp", "tls" or "relp"
    format   = "cef"          # "json" (default), "cef" or "plain"

Each event is one RFC 5424 message, ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID -
MSG``: the priority combines ``facility`` with a severity taken from the event's
``severity`` (critical 2, high 3, medium 4, low 5, anything else 6), the timestamp is
the event's ``timestamp`` (read by ``nwpipe.transform.timeutil``) and MSGID its
``alerttype``. The message is

- ``json``: the mapped event as compact JSON (the output's mapping shapes it);
- ``cef``: ArcSight Common Event Format, built from the vendor's fields:
  ``CEF:0|Netography|Fusion|1.0|<algorithm>|<summary>|<0-10>|rt=... src=... dst=...``,
  each field within the spec's length limits (Name 512, msg 1023, ...);
- ``plain``: one line of text; a mapping whose body is a JSON string (a body template
  like ``{{ severity ~ ": " ~ summary }}``) gives the text itself.

In CEF and plain messages, control characters (NUL, ESC, ...) are written as ``\\xNN``
text, so a collector or a terminal never acts on them. A message longer than
``max_message_bytes`` (8192, rsyslog's default limit) is cut at a character boundary
and ends with `` [truncated]``, or, with ``oversize = "dead-letter"``, is not sent and
goes to the dead-letter file.

Over TCP and TLS messages are framed by octet counting (RFC 6587 3.4.1, RFC 5425), or
one per line with ``framing = "newline"``. TLS verifies the collector's certificate
unless ``skip_ssl_verification`` is set. A connection that fails or drops is a
``Retry``; the next send reconnects. Over UDP nothing confirms arrival: a collector that
is down is noticed (connection refused) only from the next message on.

Over TCP and TLS a message counts as delivered once the operating system has taken it:
a collector that restarts loses what was in flight. With ``protocol = "relp"``
(``nwpipe.net.relp``) the collector acknowledges each message, a message counts as
delivered only then, and those without an answer are sent again on the next
connection (at least once).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from typing import Any

from nwpipe import Delivered, Delivery, Failed, Output, Result, Retry, Setting, hookimpl
from nwpipe.aio import within
from nwpipe.net.relp import RelpError, RelpSession
from nwpipe.net.tls import check_tls_files, client_context, tls_settings
from nwpipe.settings import positive_seconds
from nwpipe.transform.timeutil import TimeValueError, epoch_millis, iso_utc

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
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514, "relp": 2514}
_BOM = b"\xef\xbb\xbf"
#: ends a message cut to max_message_bytes
TRUNCATED = b" [truncated]"
#: the smallest max_message_bytes: every RFC 5424 receiver takes 480 bytes (6.1)
MIN_MESSAGE_BYTES = 480
#: CEF field limits, in characters, from the spec (header and extension keys)
CEF_LIMITS = {"signature": 1023, "name": 512, "msg": 1023, "cat": 1023, "externalId": 40,
              "cs1": 4000, "cs2": 4000, "cs3": 4000, "cs4": 4000, "cs5": 4000}
# C0 controls but tab, line feed and carriage return (each format handles those), DEL
# and C1 controls: NUL ends a message in some collectors, ESC drives terminals
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
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


def facility_name(number: int) -> str:
    """The name of a facility number (``16`` -> ``local0``), as users write it."""
    for name, value in FACILITIES.items():
        if value == number:
            return name
    return str(number)


def _check_facility(value: str | int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # "${SYSLOG_FACILITY:-16}" from the environment
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


def _check_message_bytes(value: int) -> int:
    if value < MIN_MESSAGE_BYTES:
        raise ValueError(f"max_message_bytes must be at least {MIN_MESSAGE_BYTES} "
                         "(what every syslog collector accepts)")
    return value


def _check_window(value: int) -> int:
    if not 1 <= value <= 10000:
        raise ValueError("relp_window must be between 1 and 10000")
    return value


def _sanitize(value: Any, limit: int) -> str:
    """A value as an RFC 5424 header field: printable ASCII, "-" when empty."""
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(value)[:limit])
    return text or "-"


# --- message formats --------------------------------------------------------------------------

def _severity_name(event: dict) -> str:
    value = event.get("severity")
    return value.strip().lower() if isinstance(value, str) else ""


def _millis(value: Any) -> int | None:
    """An event time in milliseconds since 1970, or None when absent or not a time."""
    try:
        millis = epoch_millis(value)
    except TimeValueError:
        return None
    return millis if millis is not None and millis > 0 else None


def rfc5424_timestamp(millis: int) -> str:
    """Milliseconds since 1970 as an RFC 5424 TIMESTAMP in UTC (``.250`` when not a
    whole second)."""
    return iso_utc(millis)


def escape_controls(text: str) -> str:
    """Control characters but tab and line breaks written as ``\\xNN`` text."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _limit(text: str, limit: int) -> str:
    """At most ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def truncate_message(header: bytes, text: bytes, limit: int) -> bytes:
    """``header + text`` within ``limit`` bytes: the text cut at a character boundary and
    ended with the marker when too long."""
    if len(header) + len(text) <= limit:
        return header + text
    room = max(0, limit - len(header) - len(TRUNCATED))
    # cutting may leave half a character at the end: drop it, never send broken UTF-8
    cut = text[:room].decode("utf-8", "ignore").encode("utf-8")
    return header + cut + TRUNCATED


def _addresses(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [str(v) for v in value if v not in (None, "")]


def _joined(value: Any) -> str:
    return ",".join(_addresses(value))


def cef_header_escape(value: Any, limit: int | None = None) -> str:
    """A CEF header field: at most ``limit`` characters, backslash and pipe escaped, line
    breaks as spaces, other control characters as ``\\xNN``."""
    text = "" if value is None else str(value)
    text = escape_controls(text if limit is None else _limit(text, limit))
    return (text.replace("\\", "\\\\").replace("|", "\\|")
            .replace("\r\n", " ").replace("\n", " ").replace("\r", " "))


def cef_value_escape(value: Any, limit: int | None = None) -> str:
    """A CEF extension value: at most ``limit`` characters, backslash and equals escaped,
    line breaks as \\n and \\r, other control characters as ``\\xNN``."""
    text = "" if value is None else str(value)
    text = escape_controls(text if limit is None else _limit(text, limit))
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
    header = "|".join(("CEF:0", "Netography", "Fusion", "1.0",
                       cef_header_escape(algorithm, CEF_LIMITS["signature"]),
                       cef_header_escape(name, CEF_LIMITS["name"]), str(severity)))
    extension: list[tuple[str, Any]] = []
    # rt, start and end are milliseconds since 1970, whatever unit the event used
    start = _millis(event.get("start"))
    moment = start or _millis(event.get("timestamp"))
    if moment:
        extension.append(("rt", moment))
    if start:
        extension.append(("start", start))
    end = _millis(event.get("end"))
    if end:
        extension.append(("end", end))
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
        parts.append(f"{key}={cef_value_escape(value, CEF_LIMITS.get(key))}")
    return header + "|" + " ".join(parts)


def plain_message(body: Any, event: dict) -> str:
    """One line of text: the body itself when the mapping made it a string, else a
    summary of the event."""
    if isinstance(body, str):
        return escape_controls(body)
    severity = event.get("severity") or "unknown"
    parts = [f"{severity} {event.get('alerttype') or 'alert'} {event.get('algorithm') or ''}"
             .rstrip() + ":", str(event.get("summary") or event.get("description") or "")]
    details = [f"customer={event.get('customer')}"]
    for label, key in (("src", "srcip"), ("dst", "dstip")):
        if _addresses(event.get(key)):
            details.append(f"{label}={_joined(event.get(key))}")
    details.append(f"id={event.get('id')}")
    return escape_controls(" ".join(p for p in parts if p) + " (" + " ".join(details) + ")")


# --- the output ---------------------------------------------------------------------------

class SyslogOutput(Output):
    """Send each event as an RFC 5424 syslog message over UDP, TCP, TLS or RELP."""

    settings = {
        "host": Setting(str, required=True, check=_check_host,
                        help="the syslog collector's host name or IP address"),
        "port": Setting(int, default=None, check=_check_port,
                        help="default 514 (udp, tcp), 6514 (tls) or 2514 (relp)"),
        "protocol": Setting(str, default="udp", choices=("udp", "tcp", "tls", "relp"),
                            help="transport (relp: every message acknowledged)"),
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
                           help="seconds to connect, and to hand over a batch (relp: "
                                "also to wait for the next answer)"),
        "max_message_bytes": Setting(int, default=8192, check=_check_message_bytes,
                                     help="longest message, header included (rsyslog's "
                                          "default limit is 8192)"),
        "oversize": Setting(str, default="truncate", choices=("truncate", "dead-letter"),
                            help="a longer message: cut with a marker, or dead-lettered"),
        "relp_window": Setting(int, default=128, check=_check_window,
                               help="relp: messages awaiting the collector's answer at once"),
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
        self._newline = self._protocol in ("tcp", "tls") and self._framing == "newline"
        hostname = config["hostname"] or _sanitize(socket.gethostname(), 255)
        # Everything between the timestamp and MSGID is the same for every message.
        self._middle = f" {hostname} {config['app_name']} {os.getpid()} "
        self._bom = _BOM if config["bom"] else b""
        self._timeout = float(config["timeout"])
        self._max_bytes = config["max_message_bytes"]
        self._oversize = config["oversize"]
        self._window = config["relp_window"]
        self._relp: RelpSession | None = None
        # relp: the collector's answers so far for the batch being retried: id of the
        # delivery -> (delivery, None when taken or the reason it was refused)
        self._answered: dict[int, tuple[Delivery, str | None]] = {}
        self._relp_lock = asyncio.Lock()
        self._ssl = client_context(config) if self._protocol == "tls" else None
        self._sock: socket.socket | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    # -- messages --

    def message(self, delivery: Delivery) -> bytes:
        """The RFC 5424 message for one delivery, without framing, within
        ``max_message_bytes`` (cut with a marker when longer)."""
        header, text = self._parts(delivery)
        return truncate_message(header, text, self._max_bytes)

    def _parts(self, delivery: Delivery) -> tuple[bytes, bytes]:
        """The message's header and its MSG part (with the byte-order mark if set)."""
        event = delivery.event
        severity = SYSLOG_SEVERITY.get(_severity_name(event), SYSLOG_SEVERITY_OTHER)
        millis = _millis(event.get("timestamp")) or int(time.time() * 1000)
        msgid = _sanitize(event.get("alerttype") or "", 32)
        header = (f"<{self._facility * 8 + severity}>1 {rfc5424_timestamp(millis)}"
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
        return header.encode(), self._bom + text

    def _messages(self, batch: list[Delivery]) -> tuple[list[tuple[int, bytes]],
                                                         list[tuple[int, str]]]:
        """The batch's messages as (index, message), and the (index, reason) of those
        refused for their size when ``oversize = "dead-letter"``."""
        if self._oversize == "truncate":
            return [(i, self.message(d)) for i, d in enumerate(batch)], []
        messages, refused = [], []
        for i, delivery in enumerate(batch):
            header, text = self._parts(delivery)
            size = len(header) + len(text)
            if size > self._max_bytes:
                refused.append((i, f"the syslog message is {size} bytes, over "
                                   f"max_message_bytes = {self._max_bytes}"))
            else:
                messages.append((i, header + text))
        return messages, refused

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
        if self._protocol in ("udp", "relp") and self.config.get("framing"):
            names.append("framing")  # RELP has its own framing
        if self._protocol != "relp" and self.config.get("relp_window") not in (None, 128):
            names.append("relp_window")
        return names

    async def close(self) -> None:
        """Close the socket or connection."""
        await self._disconnect()

    async def probe(self, delivery: Delivery) -> ProbeResult:
        """``nwpipe check --probe``: see probe_syslog at the end of this module."""
        return await probe_syslog(self, delivery)

    def describe(self) -> str:
        """``syslog tls siem:6514 (cef, facility local0, octet-counting framing)``."""
        details = [self._format, f"facility {facility_name(self._facility)}"]
        if self._protocol in ("tcp", "tls"):
            details.append(f"{self._framing} framing")
        if self._protocol == "relp":
            details.append(f"window {self._window}")
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
        if self._protocol == "relp":
            async with self._relp_lock:
                return await self._send_relp(batch)
        numbered, refused = self._messages(batch)
        messages = [m for _, m in numbered]
        if not messages:
            result: Result = Delivered()
        elif self._protocol == "udp":
            result = await self._send_udp(messages)
        else:
            result = await self._send_stream(messages)
        if refused and isinstance(result, Delivered):
            return Delivered(refused=tuple(refused))
        return result

    async def _send_relp(self, batch: list[Delivery]) -> Result:
        """Send what the collector has not answered yet; Delivered once every message of
        the batch has its answer, Retry (keeping the answers so far) otherwise."""
        # a new batch means the previous one is settled: forget its answers (the dict
        # keeps its deliveries alive, so their ids cannot be reused meanwhile)
        current = {id(d) for d in batch}
        self._answered = {key: v for key, v in self._answered.items() if key in current}
        numbered, refused = self._messages(batch)
        todo = [(i, m) for i, m in numbered if id(batch[i]) not in self._answered]
        for last_try in (False, True):
            if not todo:
                break
            session = self._relp
            reused = session is not None
            if session is None:
                opened = await self._connect_relp()
                if not isinstance(opened, RelpSession):
                    return opened
                session = self._relp = opened
            answers = await session.send([m for _, m in todo])
            for (i, _), frame in zip(todo, answers):
                if frame is not None:
                    # any answer settles the message: a refusal would be the same again
                    why = None if frame.status == 200 else \
                        f"{self._where} refused the message: {frame.text}"
                    self._answered[id(batch[i])] = (batch[i], why)
            if session.broken is None:
                break
            why = session.broken
            await self._disconnect()
            if reused and not last_try and not any(answers):
                # the collector closed the session while it was idle (a restart): a new
                # session now, rather than a retry after a backoff
                continue
            missing = sum(1 for frame in answers if frame is None)
            return Retry(f"RELP session with {self._where} ended ({why}); "
                         f"{missing} message{'' if missing == 1 else 's'} "
                         "not acknowledged")
        for i, d in enumerate(batch):
            why = self._answered.get(id(d), (d, None))[1]
            if why is not None:
                refused.append((i, why))
        self._answered.clear()
        return Delivered(refused=tuple(sorted(refused))) if refused else Delivered()

    async def _connect_relp(self) -> RelpSession | Result:
        """A new RELP session, or the Result when none could be opened."""
        try:
            return await RelpSession.connect(self._host, self._port, timeout=self._timeout,
                                             window=self._window)
        except asyncio.TimeoutError:
            return Retry(f"timed out after {self._timeout:g} s opening a RELP session "
                         f"with {self._where}")
        except RelpError as exc:
            if exc.permanent:
                return Failed(f"{self._where}: {exc}")
            return Retry(f"{self._where}: {exc} (is it a RELP port?)")
        except OSError as exc:
            return self._unreachable(exc)

    async def _send_udp(self, messages: list[bytes]) -> Result:
        if self._sock is None:
            try:
                infos = await within(asyncio.get_running_loop().getaddrinfo(
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
        writer, reader = self._writer, self._reader
        # (the two are set and cleared together: no reader means no connection)
        if writer is not None and (writer.is_closing() or reader is None or reader.at_eof()):
            # the collector closed the connection since the last send
            await self._disconnect()
            writer = None
        if writer is None:
            failure = await self._connect()
            if failure is not None:
                return failure
            writer = self._writer
            assert writer is not None  # _connect sets it, or gives the failure
        try:
            writer.write(b"".join([self.frame(m) for m in messages]))
            await within(writer.drain(), self._timeout)
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
            self._reader, self._writer = await within(
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
        except OSError as exc:
            return self._unreachable(exc)
        return None

    def _unreachable(self, exc: OSError) -> Retry:
        """The Retry for a connection that could not be made."""
        if isinstance(exc, socket.gaierror):
            return Retry(f"cannot resolve host {self._host!r}: {exc.strerror}")
        if isinstance(exc, ConnectionRefusedError):
            return Retry(f"connection refused by {self._where}")
        return Retry(f"cannot connect to {self._where}: {_reason(exc)}")

    async def _disconnect(self) -> None:
        if self._relp is not None:
            relp, self._relp = self._relp, None
            await relp.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await within(writer.wait_closed(), 1.0)
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
