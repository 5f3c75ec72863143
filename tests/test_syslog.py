"""The syslog output against real listeners on 127.0.0.1: UDP, TCP and TLS (trustme)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path

import pytest

from nwpipe import Delivered, Failed, Retry
from nwpipe.config import build_config
from nwpipe.errors import ConfigError
from nwpipe.outputs import Delivery
from nwpipe.plugins import Plugins
from nwpipe.settings import validate_settings
from nwpipe_plugins.syslog import SyslogOutput, cef_message

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

    async def start(self) -> "StreamCollector":
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
    for _ in range(20):
        results.append(await out.send([delivery(make_event())]))
        if isinstance(results[-1], Retry):
            break
        await asyncio.sleep(0.05)
    await out.close()
    assert isinstance(results[-1], Retry)
    assert f"connection refused by 127.0.0.1:{closed_port}" in results[-1].reason


async def test_udp_message_too_large_is_failed(udp_listener, make_event):
    out = make_output(host="127.0.0.1", port=udp_listener.getsockname()[1])
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
    for _ in range(50):  # until the close has reached this side
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
    for _ in range(20):  # the first writes after a reset may still be buffered
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
    assert out.describe() == "syslog udp h:514 (json, facility 1, ignored: ca_file, framing)"
    await out.close()
    config = build_config({"defaults": {"ca_file": tls.ca_file},
                           "outputs": {"hook": {"type": "webhook", "url": "https://h/"},
                                       "s": {"type": "syslog", "host": "h"}}},
                          Plugins(load_entry_points=False).output_types)
    assert config.outputs["s"].settings["ca_file"] == tls.ca_file


def test_defaults_and_describe():
    assert make_output(host="siem").describe() == "syslog udp siem:514 (json, facility 1)"
    assert make_output(host="siem", protocol="tls", format="cef", facility="local0").describe() \
        == "syslog tls siem:6514 (cef, facility 16, octet-counting framing)"


async def test_cli_run_delivers_every_event_in_order(collectors, tmp_path):
    collector = await collectors()
    config = tmp_path / "nwpipe.toml"
    config.write_text(f'[outputs.siem]\ntype = "syslog"\nhost = "127.0.0.1"\n'
                      f'port = {collector.port}\nprotocol = "tcp"\n')
    sample = (ROOT / "examples" / "events.jsonl").read_text()
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    env.pop("NWPIPE_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", "run", "-c", str(config), cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(sample.encode()), 60)
    assert proc.returncode == 0, err.decode()
    expected = [json.loads(line) for line in sample.splitlines() if line.strip()]
    await collector.wait_for_bytes(lambda d: len(octet_frames_safe(d)) == len(expected))
    got = [json.loads(parse(f)["msg"]) for f in octet_frames(collector.data)]
    assert got == expected
