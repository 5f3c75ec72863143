"""The syslog output against real listeners on 127.0.0.1: UDP, TCP and TLS (trustme)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path

import pytest

from nwpipe import Delivered, Failed, Retry
from nwpipe.config import build_config
from nwpipe.errors import ConfigError
from nwpipe.outputs import Delivery
from nwpipe.plugins import Plugins
from nwpipe.settings import validate_settings
from nwpipe_plugins.syslog import SyslogOutput, cef_message

from rsyslog import Rsyslog, rsyslog_missing

ROOT = Path(__file__).resolve().parent.parent

RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z) "
    rb"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    rb"(?P<msgid>[!-~]{1,32}) (?P<sd>-|\[.*?\]) (?P<msg>.*)\Z", re.S)


def make_output(**table) -> SyslogOutput:
    config = validate_settings(table, SyslogOutput.settings, key="outputs.s")
    SyslogOutput.check_config(config)
    return SyslogOutput("s", config)


def delivery(event: dict, body=None) -> Delivery:
    return Delivery(id=f"{event['id']}:{event.get('alerttype')}", event=event,
                    body=event if body is None else body, output="s")


def parse(message: bytes) -> dict:
    match = RFC5424.match(message)
    assert match, message
    return {k: v.decode() for k, v in match.groupdict().items()}


def octet_frames(data: bytes) -> list[bytes]:
    """Split an RFC 6587 octet-counted stream into messages (lengths in bytes)."""
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        assert length.isdigit(), data[:40]
        size = int(length)
        frames.append(rest[:size])
        assert len(rest) >= size
        data = rest[size:]
    return frames


class StreamCollector:
    """A TCP (or TLS) syslog collector on 127.0.0.1 that records each connection's bytes."""

    def __init__(self, ssl_context=None, port: int = 0):
        self.ssl_context = ssl_context
        self.port = port
        self.connections: list[bytearray] = []
        self.close_after_first_read = False
        self._server = None
        self._changed = asyncio.Event()
        self._writers = []

    async def start(self) -> StreamCollector:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        data = bytearray()
        self.connections.append(data)
        self._writers.append(writer)
        try:
            while chunk := await reader.read(65536):
                data += chunk
                self._changed.set()
                if self.close_after_first_read:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @property
    def data(self) -> bytes:
        return b"".join(self.connections)

    async def wait_for_bytes(self, predicate, timeout: float = 5.0) -> None:
        async def wait():
            while not predicate(self.data):
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)

    async def stop(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def collectors():
    started = []

    async def start(ssl_context=None, port=0) -> StreamCollector:
        collector = await StreamCollector(ssl_context, port).start()
        started.append(collector)
        return collector

    yield start
    for collector in started:
        await collector.stop()


@pytest.fixture
def udp_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


# -- UDP --------------------------------------------------------------------------------------

async def test_udp_sends_one_rfc5424_datagram_per_event(udp_listener, make_event):
    port = udp_listener.getsockname()[1]
    out = make_output(host="127.0.0.1", port=port, facility="local4", app_name="netography",
                      hostname="fw-01")
    events = [make_event(id=f"a{i}", severity=s) for i, s in
              enumerate(["critical", "high", "medium", "low", "odd"])]
    await out.open()
    assert await out.send([delivery(e) for e in events]) == Delivered()
    await out.close()
    got = [parse(udp_listener.recv(65535)) for _ in events]
    # PRI = facility * 8 + severity: local4 = 20; critical 2, high 3, medium 4, low 5, else 6
    assert [int(m["pri"]) for m in got] == [162, 163, 164, 165, 166]
    first = got[0]
    assert first["ts"] == "2023-07-15T03:18:51Z"        # the event's own timestamp
    assert (first["host"], first["app"], first["msgid"], first["sd"]) == \
        ("fw-01", "netography", "start", "-")
    assert first["procid"] == str(os.getpid())
    assert json.loads(first["msg"]) == events[0]


async def test_udp_refused_port_is_retry(make_event, closed_port):
    out = make_output(host="127.0.0.1", port=closed_port)
    await out.open()
    results = []
    # UDP has no handshake: the "port unreachable" answer to one datagram surfaces as
    # "connection refused" on a later send
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        results.append(await out.send([delivery(make_event())]))
        if isinstance(results[-1], Retry):
            break
        await asyncio.sleep(0.05)
    await out.close()
    assert isinstance(results[-1], Retry)
    assert f"connection refused by 127.0.0.1:{closed_port}" in results[-1].reason


async def test_udp_message_too_large_is_failed(udp_listener, make_event):
    out = make_output(host="127.0.0.1", port=udp_listener.getsockname()[1],
                      max_message_bytes=100000)
    await out.open()
    huge = make_event(summary="x" * 70000)
    result = await out.send([delivery(huge)])
    await out.close()
    assert isinstance(result, Failed) and "too large for UDP" in result.reason


# -- TCP ---------------------------------------------------------------------------------------

async def test_tcp_octet_counting_frames_count_bytes(collectors, make_event):
    collector = await collectors()
    out = make_output(host="127.0.0.1", port=collector.port, protocol="tcp")
    events = [make_event(id="a1", summary="ünïcödé 🚨 line\nbreak"), make_event(id="a2")]
    await out.open()
    assert await out.send([delivery(e) for e in events]) == Delivered()
    await collector.wait_for_bytes(lambda d: d.count(b"<") >= 2 and len(octet_frames_safe(d)) == 2)
    await out.close()
    frames = octet_frames(collector.data)
    assert [json.loads(parse(f)["msg"]) for f in frames] == events


def octet_frames_safe(data: bytes) -> list[bytes]:
    try:
        return octet_frames(data)
    except AssertionError:
        return []


async def test_tcp_newline_framing(collectors, make_event):
    collector = await collectors()
    out = make_output(host="127.0.0.1", port=collector.port, protocol="tcp", framing="newline",
                      format="plain")
    await out.open()
    event = make_event(summary="two\nlines\r\nhere")
    assert await out.send([delivery(event), delivery(make_event(id="b"))]) == Delivered()
    await collector.wait_for_bytes(lambda d: d.count(b"\n") >= 2)
    await out.close()
    lines = collector.data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    msg = parse(lines[0])["msg"]
    assert msg.startswith("medium start knownbotnet: two lines here (customer=acme")
    assert "src=1.2.3.4 dst=7.8.9.10" in msg


async def test_tcp_reconnects_after_the_collector_closes(collectors, make_event):
    collector = await collectors()
    collector.close_after_first_read = True
    out = make_output(host="127.0.0.1", port=collector.port, protocol="tcp")
    await out.open()
    assert await out.send([delivery(make_event(id="one"))]) == Delivered()
    await collector.wait_for_bytes(lambda d: b"\"one\"" in d)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the close has reached this side
        if out._reader is None or out._reader.at_eof():
            break
        await asyncio.sleep(0.02)
    collector.close_after_first_read = False
    assert await out.send([delivery(make_event(id="two"))]) == Delivered()
    await collector.wait_for_bytes(lambda d: b"\"two\"" in d)
    await out.close()
    assert len(collector.connections) == 2


async def test_tcp_collector_down_is_retry_then_recovers(collectors, make_event, closed_port):
    out = make_output(host="127.0.0.1", port=closed_port, protocol="tcp", timeout=2)
    await out.open()
    result = await out.send([delivery(make_event())])
    assert isinstance(result, Retry)
    assert result.reason == f"connection refused by 127.0.0.1:{closed_port}"
    collector = await collectors(port=closed_port)
    assert await out.send([delivery(make_event(id="back"))]) == Delivered()
    await collector.wait_for_bytes(lambda d: b"\"back\"" in d)
    await out.close()


async def test_tcp_connection_lost_mid_send_is_retry(collectors, make_event):
    collector = await collectors()
    out = make_output(host="127.0.0.1", port=collector.port, protocol="tcp", timeout=2)
    await out.open()
    assert await out.send([delivery(make_event())]) == Delivered()
    await collector.wait_for_bytes(lambda d: len(d) > 0)
    await collector.stop()
    results = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the first writes after a reset may be buffered
        results.append(await out.send([delivery(make_event())]))
        if isinstance(results[-1], Retry):
            break
        await asyncio.sleep(0.05)
    await out.close()
    assert isinstance(results[-1], Retry)
    assert "127.0.0.1" in results[-1].reason


# -- TLS ---------------------------------------------------------------------------------------

async def test_tls_verified_with_ca_file(collectors, tls, make_event):
    collector = await collectors(tls.server_context())
    out = make_output(host="127.0.0.1", port=collector.port, protocol="tls",
                      ca_file=tls.ca_file, format="cef")
    await out.open()
    assert await out.send([delivery(make_event())]) == Delivered()
    await collector.wait_for_bytes(lambda d: b"CEF:0" in d and len(octet_frames_safe(d)) == 1)
    await out.close()
    msg = parse(octet_frames(collector.data)[0])["msg"]
    assert msg.startswith("CEF:0|Netography|Fusion|1.0|knownbotnet|")


async def test_tls_untrusted_certificate_is_failed_with_advice(collectors, tls, make_event):
    collector = await collectors(tls.server_context())
    out = make_output(host="127.0.0.1", port=collector.port, protocol="tls")
    await out.open()
    result = await out.send([delivery(make_event())])
    await out.close()
    assert isinstance(result, Failed)
    assert "certificate verify failed" in result.reason and "ca_file" in result.reason
    assert collector.data == b""


async def test_tls_skip_verification_warns_and_sends(collectors, tls, make_event, caplog):
    collector = await collectors(tls.server_context())
    out = make_output(host="127.0.0.1", port=collector.port, protocol="tls",
                      skipsslverification=True)
    with caplog.at_level(logging.WARNING, logger="nwpipe"):
        await out.open()
    assert "NOT verified" in caplog.text
    assert await out.send([delivery(make_event())]) == Delivered()
    await collector.wait_for_bytes(lambda d: len(octet_frames_safe(d)) == 1)
    await out.close()
    assert "TLS NOT VERIFIED" in out.describe()


async def test_tls_to_a_plain_tcp_port_is_failed(collectors, tls, make_event):
    collector = await collectors()
    out = make_output(host="127.0.0.1", port=collector.port, protocol="tls",
                      ca_file=tls.ca_file, timeout=0.5)
    await out.open()
    result = await out.send([delivery(make_event())])
    await out.close()
    # a plain collector reads the TLS greeting as garbage and never answers
    assert isinstance(result, Retry) and "timed out" in result.reason


# -- CEF ---------------------------------------------------------------------------------------

def parse_cef(text: str) -> tuple[list[str], dict[str, str]]:
    """An independent CEF reader: unescape header fields and extension values."""
    header, i, field = [], 0, ""
    while len(header) < 7:
        c = text[i]
        if c == "\\":
            field += text[i + 1]
            i += 2
            continue
        if c == "|":
            header.append(field)
            field = ""
        else:
            field += c
        i += 1
    rest = text[i:]
    pairs = re.findall(r"(\w+)=((?:\\.|[^\\=])*?)(?=\s\w+=|$)", rest, re.S)
    unescape = {"\\\\": "\\", "\\=": "=", "\\n": "\n", "\\r": "\r"}
    ext = {k: re.sub(r"\\[\\=nr]", lambda m: unescape[m.group(0)], v) for k, v in pairs}
    return header, ext


def test_cef_escaping_round_trips(make_event):
    nasty = 'a|b\\c=d\ne "q" {{ x }} </script>'
    event = make_event(algorithm="bad|algo", summary=nasty, description=nasty,
                       severity="high", customer="c=1|2", dstip=["2001:db8::7"])
    text = cef_message(event)
    assert "\n" not in text and "\r" not in text
    header, ext = parse_cef(text)
    assert header == ["CEF:0", "Netography", "Fusion", "1.0", "bad|algo",
                      nasty.replace("\n", " "), "8"]
    assert ext["msg"] == nasty
    assert ext["cs2Label"] == "customer" and ext["cs2"] == "c=1|2"
    assert ext["src"] == "1.2.3.4"
    assert ext["c6a3"] == "2001:db8::7" and ext["c6a3Label"] == "Destination IPv6 Address"
    assert ext["rt"] == "1689391131000" and ext["externalId"] == event["id"]
    assert ext["cs1"] == "start" and ext["cnt"] == "1" and ext["cat"] == "iprep"
    assert "end" not in ext  # end = 0 while the alert is open


@pytest.mark.parametrize("severity, number", [("critical", "10"), ("high", "8"),
                                              ("medium", "6"), ("low", "3"), (None, "0")])
def test_cef_severity_scale(make_event, severity, number):
    assert parse_cef(cef_message(make_event(severity=severity)))[0][6] == number


async def test_plain_format_uses_a_string_body(udp_listener, make_event):
    out = make_output(host="127.0.0.1", port=udp_listener.getsockname()[1], format="plain")
    await out.open()
    event = make_event()
    assert await out.send([delivery(event, body="HIGH knownbotnet on 1.2.3.4")]) == Delivered()
    await out.close()
    assert parse(udp_listener.recv(65535))["msg"] == "HIGH knownbotnet on 1.2.3.4"


async def test_bom_option(udp_listener, make_event):
    out = make_output(host="127.0.0.1", port=udp_listener.getsockname()[1], bom=True)
    await out.open()
    await out.send([delivery(make_event())])
    await out.close()
    assert parse(udp_listener.recv(65535))["msg"].startswith("\ufeff{")


# -- configuration -------------------------------------------------------------------------

def load(table: dict) -> str:
    output_types = Plugins(load_entry_points=False).output_types
    with pytest.raises(ConfigError) as info:
        build_config({"outputs": {"s": {"type": "syslog", **table}}}, output_types,
                     file="nwpipe.toml")
    return str(info.value)


@pytest.mark.parametrize("table, message", [
    ({"host": "h", "client_key": __file__}, "outputs.s: client_key is set but client_cert is not"),
    ({"host": "h", "protocol": "tls", "ca_file": __file__}, "outputs.s: cannot load ca_file"),
    ({"host": "h", "facility": "locl0"}, "unknown facility 'locl0' (did you mean 'local0'?)"),
    ({"host": "h", "facility": 30}, "facility must be a name or a number from 0 to 23"),
    ({"host": "h", "app_name": "net ography"}, "outputs.s.app_name: app_name must be"),
    ({"host": "h", "protocol": "quic"}, "outputs.s.protocol: 'quic' is not one of"),
    ({"host": "h", "format": "xml"}, "outputs.s.format: 'xml' is not one of"),
    ({"host": "h", "port": 70000}, "outputs.s.port: port must be between 1 and 65535"),
    ({}, "outputs.s.host: required setting is missing"),
])
def test_config_errors_name_the_key(table, message):
    assert message in load(table)


async def test_settings_for_another_protocol_are_ignored_with_a_warning(tls, caplog):
    # they may come from [defaults], shared with webhook outputs: not an error
    out = make_output(host="h", ca_file=tls.ca_file, framing="newline")
    with caplog.at_level(logging.WARNING, logger="nwpipe"):
        await out.open()
    assert 'outputs.s: ca_file is ignored with protocol = "udp"' in caplog.text
    assert 'outputs.s: framing is ignored with protocol = "udp"' in caplog.text
    assert out.describe() == "syslog udp h:514 (json, facility user, ignored: ca_file, framing)"
    await out.close()
    config = build_config({"defaults": {"ca_file": tls.ca_file},
                           "outputs": {"hook": {"type": "webhook", "url": "https://h/"},
                                       "s": {"type": "syslog", "host": "h"}}},
                          Plugins(load_entry_points=False).output_types)
    assert config.outputs["s"].settings["ca_file"] == tls.ca_file


def test_defaults_and_describe():
    assert make_output(host="siem").describe() == "syslog udp siem:514 (json, facility user)"
    assert make_output(host="siem", protocol="tls", format="cef", facility="local0").describe() \
        == "syslog tls siem:6514 (cef, facility local0, octet-counting framing)"


async def start_run(config: Path) -> asyncio.subprocess.Process:
    """``nwpipe run -c config`` as a subprocess, in the config's folder, reading stdin."""
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    env.pop("NWPIPE_CONFIG", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", "run", "-c", str(config), cwd=config.parent, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def test_cli_run_delivers_every_event_in_order(collectors, tmp_path):
    collector = await collectors()
    config = tmp_path / "nwpipe.toml"
    config.write_text(f'[outputs.siem]\ntype = "syslog"\nhost = "127.0.0.1"\n'
                      f'port = {collector.port}\nprotocol = "tcp"\n')
    sample = (ROOT / "examples" / "events.jsonl").read_text()
    proc = await start_run(config)
    _, err = await asyncio.wait_for(proc.communicate(sample.encode()), 60)
    assert proc.returncode == 0, err.decode()
    expected = [json.loads(line) for line in sample.splitlines() if line.strip()]
    await collector.wait_for_bytes(lambda d: len(octet_frames_safe(d)) == len(expected))
    got = [json.loads(parse(f)["msg"]) for f in octet_frames(collector.data)]
    assert got == expected


# -- time ------------------------------------------------------------------------------------

async def test_timestamps_in_any_unit_and_rounded(udp_listener, make_event):
    out = make_output(host="127.0.0.1", port=udp_listener.getsockname()[1])
    await out.open()
    stamps = [1689391131.9996, 1689391131250, 1689391131000000, "2023-07-15T03:18:51Z"]
    await out.send([delivery(make_event(id=f"t{i}", timestamp=t)) for i, t in enumerate(stamps)])
    await out.close()
    got = [parse(udp_listener.recv(65535))["ts"] for _ in stamps]
    # before: the carry from .9996 was dropped (...:51Z), microseconds were year 55,505
    assert got == ["2023-07-15T03:18:52Z", "2023-07-15T03:18:51.250Z", "2023-07-15T03:18:51Z",
                   "2023-07-15T03:18:51Z"]


def test_cef_times_are_milliseconds_whatever_the_event_used(make_event):
    event = make_event(timestamp=1689391131250, start=1689391131000, end="1689391191.0004")
    ext = parse_cef(cef_message(event))[1]
    # before: an event in milliseconds gave rt = 1689391131250000 (year 55,505)
    assert (ext["rt"], ext["start"], ext["end"]) == \
        ("1689391131000", "1689391131000", "1689391191000")
    assert "rt" not in parse_cef(cef_message(make_event(start=0, timestamp="soon")))[1]


# -- message limits and control characters ----------------------------------------------------

def test_cef_respects_the_spec_field_limits(make_event):
    event = make_event(summary="S" * 2000, description="d|=\\" * 600, algorithm="a" * 1500,
                       categories=["c" * 3000])
    header, ext = parse_cef(cef_message(event))
    assert len(header[5]) == 512 and header[5].endswith("\u2026")   # Name
    assert len(header[4]) == 1023                                    # Signature ID
    assert len(ext["msg"]) == 1023 and ext["msg"].startswith("d|=\\d|=\\")
    assert len(ext["cat"]) == 1023


def test_control_characters_are_escaped_in_cef_and_plain(make_event):
    nasty = "bad\x00nul \x1b[2Jesc \x7fdel\ttab"
    event = make_event(summary=nasty, description=nasty)
    text = cef_message(event)
    assert not any(c in text for c in "\x00\x1b\x7f")
    header, ext = parse_cef(text)
    assert header[5] == ext["msg"] == "bad\\x00nul \\x1b[2Jesc \\x7fdel\ttab"
    from nwpipe_plugins.syslog import plain_message
    assert plain_message(nasty, event) == "bad\\x00nul \\x1b[2Jesc \\x7fdel\ttab"
    assert "\x1b" not in plain_message(None, event)


@pytest.mark.parametrize("limit", [480, 1000, 8192])
def test_truncated_at_max_message_bytes_with_valid_utf8_and_a_marker(make_event, limit):
    out = make_output(host="h", format="plain", max_message_bytes=limit)
    # three-byte and four-byte characters, so the cut may fall inside one
    event = make_event(summary="ünïcödé 🚨 €" * 2000)
    message = out.message(delivery(event, body=event["summary"]))
    assert limit - 3 <= len(message) <= limit
    text = message.decode("utf-8")           # raises on a broken character
    assert text.endswith(" [truncated]")
    assert parse(message)["msg"].startswith("ünïcödé 🚨 €ünïcödé")
    short = out.message(delivery(event, body="short"))
    assert parse(short)["msg"] == "short"


def test_max_message_bytes_is_checked():
    assert "max_message_bytes must be at least 480" in load({"host": "h",
                                                             "max_message_bytes": 100})
    assert "outputs.s.oversize: 'drop' is not one of" in load({"host": "h", "oversize": "drop"})


# -- against a real rsyslogd ------------------------------------------------------------------

def need_rsyslog() -> None:
    """Skip without rsyslogd and imrelp; under CI, which installs them, fail instead."""
    missing = rsyslog_missing()
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory):
    """A real rsyslogd (imrelp and imtcp on free ports), stopped after the module."""
    need_rsyslog()
    server = Rsyslog(tmp_path_factory.mktemp("rsyslog")).start()
    yield server
    server.stop()


@pytest.fixture
def own_rsyslog(tmp_path):
    """An rsyslogd of the test's own, not started yet (a test that kills or restarts
    it); stopped after the test."""
    need_rsyslog()
    server = Rsyslog(tmp_path / "rsyslog")
    yield server
    server.stop()


def wait_for_line(rsyslog, marker: bytes, timeout: float = 60) -> None:
    """Poll rsyslog's file until a line contains ``marker``."""
    deadline = time.monotonic() + timeout
    while not any(marker in line for line in rsyslog.lines()):
        assert time.monotonic() < deadline, f"rsyslog never wrote {marker!r}"
        time.sleep(0.05)


async def test_rsyslog_takes_a_message_at_the_limit_as_one_message(rsyslog, make_event):
    out = make_output(host="127.0.0.1", port=rsyslog.tcp_port, protocol="tcp", format="plain")
    await out.open()
    fits = make_event(id="fits")
    exact = "fits " + "y" * (8192 - len(out.message(delivery(fits, body="fits "))))
    huge = "huge " + "z" * 30000       # before: rsyslog logged this as 4+ bogus messages
    assert len(out.message(delivery(fits, body=exact))) == 8192
    assert await out.send([delivery(fits, body=exact),
                           delivery(make_event(id="huge"), body=huge),
                           delivery(make_event(id="after"), body="after-the-limit")]) \
        == Delivered()
    await out.close()
    # the last message on the connection: once it is written, so is everything before
    await asyncio.to_thread(wait_for_line, rsyslog, b" - after-the-limit")
    lines = [line for line in rsyslog.lines() if b"fits y" in line or b"huge z" in line
             or b"zzz" in line or b" - after-the-limit" in line]
    assert len(lines) == 3, [line[:80] for line in lines]
    assert parse(lines[0])["msg"] == exact
    assert parse(lines[1])["msg"].startswith("huge zzz") and lines[1].endswith(b" [truncated]")
    assert len(lines[1]) == 8192
    assert parse(lines[2])["msg"] == "after-the-limit"


async def test_relp_every_message_acknowledged_by_rsyslog(rsyslog, make_event):
    out = make_output(host="127.0.0.1", port=rsyslog.relp_port, protocol="relp",
                      relp_window=16)
    assert out.describe() == f"syslog relp 127.0.0.1:{rsyslog.relp_port} (json, facility user, " \
                             "window 16)"
    await out.open()
    events = [make_event(id=f"relp-ack-{i}") for i in range(250)]
    assert await out.send([delivery(e) for e in events]) == Delivered()
    await out.close()
    # acknowledged means written: the file has them already, no waiting needed
    got = [json.loads(parse(line)["msg"]) for line in rsyslog.lines()
           if b"relp-ack-" in line]
    assert got == events


async def test_relp_collector_down_is_retry_then_recovers(own_rsyslog, make_event):
    collector = own_rsyslog                              # not started yet
    out = make_output(host="127.0.0.1", port=collector.relp_port, protocol="relp", timeout=2)
    await out.open()
    result = await out.send([delivery(make_event(id="early"))])
    assert isinstance(result, Retry)
    assert result.reason == f"connection refused by 127.0.0.1:{collector.relp_port}"
    await asyncio.to_thread(collector.start)
    assert await out.send([delivery(make_event(id="early"))]) == Delivered()
    await out.close()
    assert [json.loads(parse(line)["msg"])["id"] for line in collector.lines()] == ["early"]


class ScriptedRelpServer:
    """A RELP server on 127.0.0.1 that answers as a test says, for the faults a real
    collector shows only by chance: an answer lost with the connection, a refusal."""

    def __init__(self):
        self.received: list[bytes] = []   # every syslog message, in arrival order
        self.answer = lambda number: b"200 OK"   # per message received (1, 2, ...)
        self.drop_after: int | None = None       # close the connection after N messages
        self.open_answer = b"200 OK\nrelp_version=0\ncommands=syslog"
        self.connections = 0

    async def start(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        from nwpipe.net.relp import FrameReader, encode_frame
        self.connections += 1
        frames = FrameReader(reader)
        try:
            while True:
                frame = await frames.read()
                if frame.command == "open":
                    writer.write(encode_frame(frame.txnr, "rsp", self.open_answer))
                elif frame.command == "close":
                    writer.write(encode_frame(frame.txnr, "rsp"))
                    break
                elif frame.command == "syslog":
                    self.received.append(frame.data)
                    if self.drop_after is not None and len(self.received) > self.drop_after:
                        self.drop_after = None
                        break  # taken but never answered
                    writer.write(encode_frame(frame.txnr, "rsp",
                                              self.answer(len(self.received))))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def stop(self):
        self._server.close()
        await self._server.wait_closed()


async def test_relp_resends_only_what_was_not_acknowledged(make_event):
    server = await ScriptedRelpServer().start()
    server.drop_after = 3   # the 4th message arrives, its answer is lost with the connection
    out = make_output(host="127.0.0.1", port=server.port, protocol="relp", relp_window=2)
    await out.open()
    batch = [delivery(make_event(id=f"m{i}")) for i in range(6)]
    first = await out.send(batch)
    assert isinstance(first, Retry)
    assert "not acknowledged" in first.reason
    # the engine retries the same batch: the three acknowledged are not sent again
    assert await out.send(batch) == Delivered()
    await out.close()
    await server.stop()
    ids = [json.loads(parse(m)["msg"])["id"] for m in server.received]
    assert ids[:4] == ["m0", "m1", "m2", "m3"]
    assert ids[4:] == ["m3", "m4", "m5"]        # m3 again: at least once
    assert server.connections == 2


async def test_relp_refused_message_is_dead_lettered_alone(make_event):
    server = await ScriptedRelpServer().start()
    server.answer = lambda n: b"500 message refused\x1b[2J" if n == 2 else b"200 OK"
    server.drop_after = 2   # and the answer to the third is lost with the connection
    out = make_output(host="127.0.0.1", port=server.port, protocol="relp")
    await out.open()
    batch = [delivery(make_event(id=f"r{i}")) for i in range(3)]
    assert isinstance(await out.send(batch), Retry)
    # the refusal is remembered across the retry: not sent again, not counted delivered
    result = await out.send(batch)
    await out.close()
    await server.stop()
    assert [json.loads(parse(m)["msg"])["id"] for m in server.received] == \
        ["r0", "r1", "r2", "r2"]
    assert result == Delivered(refused=((1, f"127.0.0.1:{server.port} refused the message: "
                                            "500 message refused[2J"),))


async def test_relp_session_refused_or_not_relp(make_event, collectors):
    server = await ScriptedRelpServer().start()
    server.open_answer = b"500 not allowed here"
    out = make_output(host="127.0.0.1", port=server.port, protocol="relp")
    result = await out.send([delivery(make_event())])
    assert isinstance(result, Failed) and "refused the RELP session: 500 not allowed" \
        in result.reason
    await out.close()
    await server.stop()
    # a port that speaks something else and never answers
    plain = await collectors()
    out = make_output(host="127.0.0.1", port=plain.port, protocol="relp", timeout=0.5)
    result = await out.send([delivery(make_event())])
    assert isinstance(result, Retry) and "timed out" in result.reason
    await out.close()


async def test_relp_oversize_dead_letter_refuses_only_that_message(rsyslog, make_event):
    out = make_output(host="127.0.0.1", port=rsyslog.relp_port, protocol="relp",
                      oversize="dead-letter", format="plain")
    await out.open()
    batch = [delivery(make_event(id="small-1"), body="small-1"),
             delivery(make_event(id="big"), body="b" * 9000),
             delivery(make_event(id="small-2"), body="small-2")]
    result = await out.send(batch)
    await out.close()
    assert isinstance(result, Delivered)
    assert len(result.refused) == 1 and result.refused[0][0] == 1
    assert "over max_message_bytes = 8192" in result.refused[0][1]
    msgs = [parse(line)["msg"] for line in rsyslog.lines() if b" - small-" in line
            or b"bbbb" in line]
    assert msgs == ["small-1", "small-2"]


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_relp_collector_restarted_mid_run_loses_nothing(own_rsyslog, tmp_path,
                                                              make_event, how):
    """kill -9 (or SIGTERM) of rsyslogd while events stream, then a restart on the same
    port: every event is in rsyslog's file or in the dead-letter file."""
    collector = await asyncio.to_thread(own_rsyslog.start)
    dead = tmp_path / "dead.jsonl"
    config = tmp_path / "nwpipe.toml"
    config.write_text(f'dead_letter = "{dead}"\n[outputs.siem]\ntype = "syslog"\n'
                      f'host = "127.0.0.1"\nport = {collector.relp_port}\nprotocol = "relp"\n'
                      f'timeout = 5\n')
    total = 4000
    lines = [json.dumps(make_event(id=f"kill-{i:05d}")).encode() + b"\n" for i in range(total)]
    proc = await start_run(config)
    try:
        proc.stdin.write(b"".join(lines))
        writing = asyncio.ensure_future(proc.stdin.drain())
        # kill while messages are in flight: some written, some sent but not answered
        await asyncio.to_thread(collector.wait_for_lines, 300)
        getattr(collector, how)()
        in_file_at_kill = len(collector.lines())
        await asyncio.to_thread(collector.start)
        await writing
        proc.stdin.close()
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
        collector.stop()
    assert in_file_at_kill < total, "the kill came after the end: nothing was tested"
    received = set()
    for line in collector.lines():
        event = json.loads(parse(line)["msg"])
        received.add(event["id"])
    dead_ids = set()
    if dead.exists():
        for line in dead.read_text().splitlines():
            dead_ids.add(json.loads(line)["event"]["id"])
    expected = {f"kill-{i:05d}" for i in range(total)}
    assert expected - received - dead_ids == set(), err.decode()[-2000:]
    assert proc.returncode in (0, 3), err.decode()[-2000:]


async def test_cli_oversize_dead_letter_keeps_the_others_flowing(rsyslog, tmp_path, make_event):
    """oversize = "dead-letter": the one long event goes to the dead-letter file with its
    reason, the rest of its batch reaches rsyslog, the summary counts both."""
    dead = tmp_path / "dead.jsonl"
    config = tmp_path / "nwpipe.toml"
    config.write_text(f'dead_letter = "{dead}"\n[outputs.siem]\ntype = "syslog"\n'
                      f'host = "127.0.0.1"\nport = {rsyslog.tcp_port}\nprotocol = "tcp"\n'
                      f'oversize = "dead-letter"\nmax_message_bytes = 2000\n')
    events = [make_event(id="over-1"), make_event(id="over-2", description="d" * 5000),
              make_event(id="over-3")]
    proc = await start_run(config)
    _, err = await asyncio.wait_for(
        proc.communicate(b"".join(json.dumps(e).encode() + b"\n" for e in events)), 60)
    assert proc.returncode == 3, err.decode()   # 3: something is in the dead-letter file
    assert "2 delivered" in err.decode() and "1 dead-lettered" in err.decode()
    assert "Traceback" not in err.decode()
    records = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [r["event"]["id"] for r in records] == ["over-2"]
    assert "over max_message_bytes = 2000" in records[0]["reason"]
    await asyncio.to_thread(wait_for_line, rsyslog, b'"over-3"')
    ids = [json.loads(parse(line)["msg"])["id"] for line in rsyslog.lines()
           if b'"over-' in line]
    assert ids == ["over-1", "over-3"]


async def test_relp_session_closed_while_idle_reconnects_at_once(own_rsyslog, make_event):
    collector = await asyncio.to_thread(own_rsyslog.start)
    out = make_output(host="127.0.0.1", port=collector.relp_port, protocol="relp")
    await out.open()
    assert await out.send([delivery(make_event(id="before"))]) == Delivered()
    await asyncio.to_thread(collector.stop)     # sends serverclose to the idle session
    await asyncio.to_thread(collector.start)
    # no Retry (and no backoff): the stale session is replaced within the send
    assert await out.send([delivery(make_event(id="after"))]) == Delivered()
    await out.close()
    ids = [json.loads(parse(line)["msg"])["id"] for line in collector.lines()]
    assert ids == ["before", "after"]
