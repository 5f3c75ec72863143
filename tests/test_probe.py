"""`nwpipe check --probe` against real receivers on 127.0.0.1: OK, TLS failures, auth
failures, refused connections, each reported in plain words."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import sys
from pathlib import Path

import pytest

from nwpipe.commands.probe import probe_event, probe_outputs
from nwpipe.config import build_config
from nwpipe.plugins import Plugins
from nwpipe.transform.routing import Router

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_TYPES = Plugins(load_entry_points=False).output_types


async def probe(outputs: dict, mappings: dict | None = None) -> dict[str, object]:
    config = build_config({"outputs": outputs, "mappings": mappings or {}}, OUTPUT_TYPES,
                          file="nwpipe.toml")
    results = await probe_outputs(config, Router(config))
    return {r.output: r for r in results}


@contextlib.asynccontextmanager
async def tcp_collector():
    """A TCP server on 127.0.0.1 keeping what each connection sends: yields (port, got)."""
    got: list[bytes] = []

    async def handle(reader, writer):
        got.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], got
    finally:
        server.close()
        await server.wait_closed()


async def until_received(got: list, timeout: float = 30.0) -> None:
    """Wait for the first connection's data, with a deadline only a failure reaches."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not got and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)


async def test_ok_reports_status_and_time_and_sends_a_marked_test_event(receiver):
    results = await probe({"soc": {"type": "webhook", "url": f"{receiver.url}/hook"}})
    result = results["soc"]
    assert result.ok
    assert re.fullmatch(r"soc: OK \(HTTP 200 in \d+ ms\)", result.line())
    [request] = receiver.requests
    event = request.json()
    assert event["alerttype"] == "end" and event["algorithm"] == "nwpipe_probe"
    assert event["id"].startswith("nwpipe-probe-")
    assert "not a real alert" in event["summary"]
    assert request.headers["webhook-id"].startswith("nwp_probe_")
    assert request.headers["Idempotency-Key"] == request.headers["webhook-id"]


async def test_each_probe_has_a_new_id(receiver):
    for _ in range(2):
        await probe({"soc": {"type": "webhook", "url": receiver.url}})
    first, second = receiver.requests
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    assert first.json()["id"] != second.json()["id"]


async def test_the_event_is_mapped_as_configured_for_the_outputs_customer(receiver):
    mappings = {"siem": {"keep": False, "fields": {"who": "$.customer",
                                                   "title": "{{ algorithm | upper }}"}}}
    await probe({"soc": {"type": "webhook", "url": receiver.url, "mapping": "siem",
                         "customers": ["globex", "acme"]}}, mappings)
    assert receiver.requests[0].json() == {"who": "acme", "title": "NWPIPE_PROBE"}


async def test_pagerduty_template_resolves_instead_of_paging(receiver):
    body = '{% set routing_key = "k" %}{% include "pagerduty.json.j2" %}'
    await probe({"pd": {"type": "webhook", "url": receiver.url, "mapping": "pd"}},
                {"pd": {"body": body}})
    sent = receiver.requests[0].json()
    assert sent["event_action"] == "resolve" and sent["dedup_key"].startswith("nwpipe-probe-")


async def test_401_with_basic_auth_says_check_username_password(receiver):
    receiver.reply(401)
    results = await probe({"soc": {"type": "webhook", "url": receiver.url,
                                   "username": "u", "password": "wrong-secret"}})
    assert results["soc"].line() == "soc: HTTP 401 Unauthorized: check username/password"
    assert not results["soc"].ok


async def test_401_without_credentials_says_what_to_set(receiver):
    receiver.reply(401)
    result = (await probe({"soc": {"type": "webhook", "url": receiver.url}}))["soc"]
    assert "wants credentials" in result.message and "username and password" in result.message


async def test_403_with_bearer_token(receiver):
    receiver.reply(403)
    result = (await probe({"soc": {"type": "webhook", "url": receiver.url,
                                   "bearer_token": "t0ken"}}))["soc"]
    assert result.message.startswith("HTTP 403 Forbidden: the credentials were refused")
    assert "t0ken" not in result.message


@pytest.mark.parametrize("status, words", [
    (404, "HTTP 404 Not Found: check the path in url"),
    (405, "HTTP 405 Method Not Allowed: check method"),
    (422, "the receiver rejected the test event's body — check the mapping"),
    (503, "HTTP 503 Service Unavailable: reachable, but the receiver failed"),
    (429, "reachable, but rate-limited"),
])
async def test_statuses_in_plain_words(receiver, status, words):
    receiver.reply(status, body="nope")
    result = (await probe({"soc": {"type": "webhook", "url": receiver.url}}))["soc"]
    assert words in result.message and not result.ok


async def test_untrusted_certificate(tls_receiver):
    result = (await probe({"soc": {"type": "webhook", "url": tls_receiver.url}}))["soc"]
    assert result.message.startswith("certificate verify failed: the server's certificate "
                                      "is not trusted")
    assert "set ca_file" in result.message
    assert tls_receiver.requests == []


async def test_trusted_with_ca_file(tls_receiver, tls):
    result = (await probe({"soc": {"type": "webhook", "url": tls_receiver.url,
                                   "ca_file": tls.ca_file}}))["soc"]
    assert result.ok and result.status == 200


async def test_certificate_for_another_host(make_receiver, tls):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.ca.issue_cert("other.test").configure_cert(context)
    receiver = await make_receiver(context)
    result = (await probe({"soc": {"type": "webhook", "url": receiver.url,
                                   "ca_file": tls.ca_file}}))["soc"]
    assert result.message.startswith("certificate verify failed: the certificate is not "
                                      "valid for 127.0.0.1")


async def test_https_to_a_plain_http_port(receiver):
    url = receiver.url.replace("http://", "https://")
    result = (await probe({"soc": {"type": "webhook", "url": url}}))["soc"]
    assert "does not speak TLS on this port" in result.message


async def test_connection_refused(closed_port):
    result = (await probe({"soc": {"type": "webhook",
                                   "url": f"http://127.0.0.1:{closed_port}/"}}))["soc"]
    assert result.line() == f"soc: connection refused: nothing listens on 127.0.0.1:{closed_port}"


async def test_timeout(receiver):
    receiver.reply(200, delay=3)
    result = (await probe({"soc": {"type": "webhook", "url": receiver.url,
                                   "timeout": 0.3}}))["soc"]
    assert result.message.startswith("no answer within 0.3 s")


async def test_mapping_failure_is_reported(receiver):
    result = (await probe({"soc": {"type": "webhook", "url": receiver.url, "mapping": "m"}},
                          {"m": {"fields": {"x": "{{ no_such_field }}"}}}))["soc"]
    assert result.message.startswith("the mapping failed on the test event:")
    assert "no_such_field" in result.message and receiver.requests == []


async def test_syslog_is_probed_and_local_outputs_are_not(tmp_path, closed_port):
    async with tcp_collector() as (port, got):
        results = await probe({
            "siem": {"type": "syslog", "host": "127.0.0.1", "port": port, "protocol": "tcp"},
            "down": {"type": "syslog", "host": "127.0.0.1", "port": closed_port,
                     "protocol": "tcp"},
            "archive": {"type": "file", "path": str(tmp_path / "a.jsonl")},
        })
        await until_received(got)
    assert results["siem"].ok and results["siem"].message.startswith("OK (sent in")
    assert b"nwpipe_probe" in got[0]
    assert results["down"].message == \
        f"connection refused: nothing listens on 127.0.0.1:{closed_port}"
    assert results["archive"].ok and not results["archive"].probed
    assert results["archive"].message == "not probed (file output)"
    assert not (tmp_path / "a.jsonl").exists()


def test_probe_event_has_the_vendor_shape():
    sample = json.loads((ROOT / "examples" / "netography-sample.json").read_text())
    event = probe_event("acme", now=1700000000)
    assert set(event) == set(sample)
    for key, value in sample.items():
        assert type(event[key]) is type(value) or value is None, key
    assert event["customer"] == "acme" and event["end"] == event["start"] == 1700000000


async def nwpipe(*args, cwd, env=None):
    full_env = {**os.environ, "NWPIPE_LOAD_PLUGINS": "", **(env or {})}
    full_env.pop("NWPIPE_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", *args, cwd=cwd, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_check_probe_reports_each_output_and_exits_1_on_failure(
        make_receiver, tls, tmp_path):
    good = await make_receiver()
    locked = await make_receiver()
    locked.reply(401)
    secure = await make_receiver(tls.server_context())
    config = tmp_path / "nwpipe.toml"
    config.write_text(f"""
[outputs.soc]
type = "webhook"
url = "{good.url}/in"

[outputs.locked]
type = "webhook"
url = "{locked.url}/in"
username = "soc"
password = "${{LOCKED_PASSWORD}}"

[outputs.secure]
type = "webhook"
url = "{secure.url}/in"
""")
    code, out, err = await nwpipe("check", "--probe", "-c", str(config), cwd=tmp_path,
                                  env={"LOCKED_PASSWORD": "hunter2-secret"})
    assert code == 1, err
    lines = out.splitlines()
    assert re.search(r"^  soc: OK \(HTTP 200 in \d+ ms\)$", out, re.M), out
    assert "  locked: HTTP 401 Unauthorized: check username/password" in lines
    assert any(line.startswith("  secure: certificate verify failed: the server's "
                               "certificate is not trusted") for line in lines)
    assert "hunter2-secret" not in out + err and "Traceback" not in err
    config.write_text(f'[outputs.soc]\ntype = "webhook"\nurl = "{good.url}/in"\n')
    code, out, err = await nwpipe("check", "--probe", "-c", str(config), cwd=tmp_path)
    assert code == 0, out + err
    assert len(good.requests) == 2


async def test_cli_check_without_probe_sends_nothing(receiver, tmp_path):
    config = tmp_path / "nwpipe.toml"
    config.write_text(f'[outputs.soc]\ntype = "webhook"\nurl = "{receiver.url}"\n')
    code, out, _ = await nwpipe("check", "-c", str(config), cwd=tmp_path)
    assert code == 0 and "test event" not in out
    assert receiver.requests == []


PROBED_PLUGIN = '''
import asyncio

from nwpipe import Delivered, Output, ProbeResult, Retry, Setting, hookimpl
from nwpipe.probing import explain_exception, explain_reason, ms, send_once


class Line(Output):
    """Writes each body as a line to a TCP port."""

    settings = {"port": Setting(int, required=True), "explode": Setting(bool, default=False)}

    async def send(self, batch):
        _, writer = await asyncio.open_connection("127.0.0.1", self.config["port"])
        writer.write(b"".join(d.body_json() + b"\\n" for d in batch))
        await writer.drain()
        writer.close()
        return Delivered()

    async def probe(self, delivery):
        if self.config["explode"]:
            raise RuntimeError("boom")
        result, error, elapsed = await send_once(self, delivery)
        if isinstance(result, Delivered):
            return ProbeResult(True, f"OK (line written in {ms(elapsed)})", elapsed=elapsed)
        message = explain_exception(error, "127.0.0.1", self.config["port"]) if error else None
        return ProbeResult(False, message or explain_reason(result.reason, "127.0.0.1"))


class Quiet(Output):
    async def send(self, batch):
        return Delivered()


@hookimpl
def register_outputs(register):
    register("line", Line)
    register("quiet", Quiet)
'''


async def test_a_third_party_output_with_probe_is_probed_and_one_without_is_not(
        tmp_path, closed_port):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "line.py").write_text(PROBED_PLUGIN)
    async with tcp_collector() as (port, got):
        config = tmp_path / "nwpipe.toml"
        config.write_text(f"""
[outputs.up]
type = "line"
port = {port}
mapping = "m"

[outputs.down]
type = "line"
port = {closed_port}

[outputs.buggy]
type = "line"
port = {port}
explode = true

[outputs.local]
type = "quiet"

[mappings.m]
keep = false
fields = {{ what = "{{{{ algorithm }}}}", id = "$.id" }}
""")
        code, out, err = await nwpipe("--plugins-dir", str(plugins), "check", "--probe",
                                      "-c", str(config), cwd=tmp_path)
        await until_received(got)
    assert code == 1, out + err
    assert re.search(r"^  up: OK \(line written in \d+ ms\)$", out, re.M), out
    assert f"  down: connection refused: nothing listens on 127.0.0.1:{closed_port}\n" in out
    assert "  buggy: the probe failed: RuntimeError: boom\n" in out
    assert "  local: not probed (quiet output)\n" in out
    assert "Traceback" not in err
    [line] = got
    body = json.loads(line)
    assert body["what"] == "nwpipe_probe" and body["id"].startswith("nwpipe-probe-")
