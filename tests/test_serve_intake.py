"""The HTTP intake of a real ``nwpipe serve`` process: what a sender sees.

Every answer is checked as a sender gets it over a real connection to 127.0.0.1: the
status, the JSON body, the headers (``WWW-Authenticate``, ``Retry-After``, ``Allow``),
and what the process did with the events (the queue, the dead-letter file, one log
line). These processes run with ``--no-deliver`` (intake only): delivery from the queue
is tested in test_serve_delivery.py.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serveproc import ServeProcess
from standardwebhooks import Webhook

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (ROOT / "examples" / "netography-sample.json").read_bytes()
SECRET = "whsec_" + base64.b64encode(b"a test signing key of 32 bytes..").decode()

BASIC = """
[serve]
authusername = "netography"
authpassword = "${SERVE_PASSWORD:-s3cret pass}"
max_body_bytes = 4096

[outputs.archive]
type = "file"
path = "delivered.jsonl"
"""

def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic_auth("netography", "s3cret pass")


def event(n: int, alerttype: str = "start", **fields) -> dict:
    e = {"id": f"alert-{n}", "customer": "acme", "alerttype": alerttype, "updatecount": 1}
    e.update(fields)
    return e


def dead_letters(folder: Path) -> list[dict]:
    path = folder / "nwpipe-dead-letter.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    """One intake with Basic Auth (the portal's key names) for the module."""
    proc = ServeProcess(tmp_path_factory.mktemp("serve"), BASIC, "--no-deliver").start()
    yield proc
    assert proc.stop() == 0


async def post(url: str, body: bytes | str, *, auth=AUTH, headers=None, method="POST"):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, data=body,
                                   headers={**(auth or {}), **(headers or {})}) as response:
            text = await response.read()
            return response.status, response.headers, (json.loads(text) if text else None)


async def queue_depth(proc: ServeProcess) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(proc.metrics_url + "/metrics") as response:
            text = await response.text()
    for family in text_string_to_metric_families(text):
        if family.name == "nwpipe_queue_depth":
            return family.samples[0].value
    raise AssertionError("no nwpipe_queue_depth")


# -- bodies a sender may post -------------------------------------------------------


async def test_the_vendor_sample_pretty_printed_is_accepted_and_queued(basic):
    before = await queue_depth(basic)
    status, _, body = await post(basic.url + "/", SAMPLE)
    assert (status, body) == (200, {"accepted": 1})
    assert await queue_depth(basic) == before + 1


async def test_an_array_and_json_lines_are_accepted_whole(basic):
    lifecycle = [event(1, "start"), event(1, "ongoing", updatecount=2), event(1, "end")]
    status, _, body = await post(basic.url + "/", orjson.dumps(lifecycle))
    assert (status, body) == (200, {"accepted": 3})
    lines = b"\n".join(orjson.dumps(e) for e in lifecycle) + b"\n"
    status, _, body = await post(basic.url + "/", lines)
    assert (status, body) == (200, {"accepted": 3})


# -- bad requests ---------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, basic_auth("netography", "wrong"),
                                  basic_auth("other", "s3cret pass")])
async def test_wrong_or_missing_credentials_get_401_with_a_challenge(basic, auth):
    status, headers, body = await post(basic.url + "/", orjson.dumps(event(1)), auth=auth)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Basic realm="nwpipe"')
    assert body["error"] in ("credentials required", "wrong user name or password")
    line = basic.wait_line(r"serve: 401 to 127\.0\.0\.1 POST")
    assert "s3cret" not in basic.stderr and "wrong" not in line.split("POST:")[0]


async def test_a_body_over_max_body_bytes_gets_413_and_nothing_is_queued(basic):
    before = await queue_depth(basic)
    big = orjson.dumps(event(1, description="x" * 5000))
    status, _, body = await post(basic.url + "/", big)
    assert status == 413 and "max_body_bytes (4096 bytes)" in body["error"]

    # chunked, without a Content-Length: counted while it arrives
    async def chunks():
        for _ in range(10):
            yield b" " * 1000
    status, _, body = await post(basic.url + "/", chunks())
    assert status == 413
    assert await queue_depth(basic) == before


@pytest.mark.parametrize("payload, error", [
    (b"this is not json", "not valid JSON"),
    (b"42", "not an object"),
    (b'{"customer": "acme"}', "event has no 'id' field"),
    (b'{"id": "a-1"}', "event has no 'customer' field"),
    (b"", "empty body: no event"),
])
async def test_a_single_bad_event_gets_400_and_is_dead_lettered(basic, payload, error):
    status, _, body = await post(basic.url + "/", payload)
    assert status == 400
    assert error in body["error"]
    if payload:
        records = [r for r in dead_letters(basic.folder) if r["reason"] == body["refused"][0]["error"]]
        assert records and records[-1]["stage"] == "intake"
        assert records[-1]["source"] == "serve 127.0.0.1"


async def test_the_log_line_of_a_refusal_names_its_reason_once(basic):
    await post(basic.url + "/", b'{"customer": "acme", "alerttype": "start"}')
    line = basic.wait_line("400 to 127.0.0.1 POST: event has no 'id' field")
    assert line.count("event has no 'id' field") == 1, line
    assert line.endswith("(dead-lettered)"), line
    await post(basic.url + "/", orjson.dumps([event(20), {"id": "a-21"}]))
    line = basic.wait_line("1 of 2 events refused")
    assert line.endswith(": first: event has no 'customer' field (dead-lettered)"), line


async def test_good_events_of_a_mixed_request_are_accepted_and_the_bad_ones_listed(basic):
    before = await queue_depth(basic)
    mixed = [event(10), 7, {"id": "a-11"}, event(12)]
    status, _, body = await post(basic.url + "/", orjson.dumps(mixed))
    assert status == 400
    assert body["accepted"] == 2
    assert body["refused"] == [
        {"index": 1, "error": "a JSON array element is not an object (got number)"},
        {"index": 2, "error": "event has no 'customer' field"}]
    assert await queue_depth(basic) == before + 2
    records = dead_letters(basic.folder)
    assert {"stage": "intake", "event": {"id": "a-11"}}.items() <= records[-1].items()
    assert (records[-2]["stage"], records[-2]["raw"]) == ("intake", "7")


async def test_other_methods_get_405_and_other_paths_404(basic):
    status, headers, body = await post(basic.url + "/", b"", method="PUT")
    assert (status, headers["Allow"]) == (405, "POST")
    assert "not allowed" in body["error"]
    status, _, body = await post(basic.url + "/elsewhere", orjson.dumps(event(1)))
    assert status == 404 and "error" in body


async def test_ops_endpoints_need_no_credentials_and_metrics_parse(basic):
    async with aiohttp.ClientSession() as session:
        async with session.get(basic.url + "/healthz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})
        async with session.get(basic.url + "/readyz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ready"})
        await post(basic.url + "/", b"nope")
        async with session.get(basic.url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("nwpipe_intake_events_refused_total", (("reason", "invalid"),))] >= 1
    assert samples[("nwpipe_intake_requests_total", (("status", "400"),))] >= 1
    assert ("nwpipe_queue_depth", ()) in samples
    assert ("nwpipe_queue_oldest_age_seconds", ()) in samples
    assert "nwpipe_intake_events_accepted" in families


# -- other authentication ------------------------------------------------------------


async def test_bearer_token(tmp_path):
    proc = ServeProcess(tmp_path, '[serve]\nbearer_token = "t0ken"\n'
                        '[outputs.a]\ntype = "file"\npath = "out.jsonl"\n', "--no-deliver").start()
    try:
        body = orjson.dumps(event(1))
        ok = await post(proc.url + "/", body, auth=None, headers={"Authorization": "Bearer t0ken"})
        assert ok[0] == 200
        status, headers, answer = await post(proc.url + "/", body, auth=None,
                                             headers={"Authorization": "Bearer nope"})
        assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="nwpipe"')
        status, _, _ = await post(proc.url + "/", body, auth=AUTH)  # Basic instead of Bearer
        assert status == 401
    finally:
        assert proc.stop() == 0
    assert "t0ken" not in proc.stderr


async def test_standard_webhooks_signatures_are_verified(tmp_path):
    proc = ServeProcess(tmp_path, f'[serve]\nsigning_secret = "{SECRET}"\n'
                        '[outputs.a]\ntype = "file"\npath = "out.jsonl"\n', "--no-deliver").start()
    signer = Webhook(SECRET)
    body = orjson.dumps(event(1)).decode()

    def signed(msg_id: str, at: datetime, data: str = body, signature: str | None = None):
        return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": signature or signer.sign(msg_id, at, data),
                "Content-Type": "application/json"}
    try:
        now = datetime.now(timezone.utc)
        status, _, answer = await post(proc.url + "/", body, auth=None,
                                       headers=signed("msg_1", now))
        assert (status, answer) == (200, {"accepted": 1})
        # a rotated secret sends several signatures: one valid is enough
        both = "v1,AAAA " + signer.sign("msg_2", now, body)
        status, _, _ = await post(proc.url + "/", body, auth=None,
                                  headers=signed("msg_2", now, signature=both))
        assert status == 200
        for headers, why in [
                ({}, "missing webhook-id"),
                (signed("msg_3", now, data=body + " "), "signature does not match"),
                (signed("msg_4", datetime.fromtimestamp(time.time() - 3600, timezone.utc)),
                 "more than 300 s away")]:
            status, got, answer = await post(proc.url + "/", body, auth=None, headers=headers)
            assert status == 401 and why in answer["error"], answer
            assert got["WWW-Authenticate"]
    finally:
        assert proc.stop() == 0


# -- HTTPS ----------------------------------------------------------------------------


async def test_https_with_tls_cert_and_key(tmp_path, tls):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls.server_cert.cert_chain_pems[0].write_to_path(str(cert))
    tls.server_cert.private_key_pem.write_to_path(str(key))
    proc = ServeProcess(tmp_path, f'[serve]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                        '[outputs.a]\ntype = "file"\npath = "out.jsonl"\n', "--no-deliver").start()
    try:
        assert proc.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=tls.ca_file)
        async with aiohttp.ClientSession() as session:
            async with session.post(proc.url + "/", data=orjson.dumps(event(1)),
                                    ssl=trusted) as r:
                assert (r.status, await r.json()) == (200, {"accepted": 1})
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.post(proc.url + "/", data=b"{}")  # system CAs: not trusted
    finally:
        assert proc.stop() == 0


# -- slow clients and many connections ----------------------------------------------


def raw_exchange(url: str, data: bytes, *, keep: bool = False):
    """Send ``data`` on a new connection to ``url``; what comes back before the server
    closes it or answers (b"" when it closed without a word), and the socket if ``keep``."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(30)
    try:
        if data:
            sock.sendall(data)
        answer = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        answer = b""
    if not keep:
        sock.close()
        return answer
    return answer, sock


def test_stalled_clients_are_cut_off(tmp_path):
    proc = ServeProcess(tmp_path, '[serve]\nread_timeout = 1\n'
                        '[outputs.a]\ntype = "file"\npath = "out.jsonl"\n', "--no-deliver").start()
    try:
        # headers that never end: closed after read_timeout (30 s: only on failure)
        started = time.monotonic()
        assert raw_exchange(proc.url, b"POST / HTTP/1.1\r\nHost: x\r\n") == b""
        assert time.monotonic() - started < 20
        # a connection that never sends a request: closed too
        assert raw_exchange(proc.url, b"") == b""
        # a body that stops half way: 408
        answer = raw_exchange(proc.url, b"POST / HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Length: 100\r\n\r\n{")
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        assert proc.stop() == 0


def test_connections_beyond_max_connections_are_closed(tmp_path):
    proc = ServeProcess(tmp_path, '[serve]\nmax_connections = 3\n'
                        '[outputs.a]\ntype = "file"\npath = "out.jsonl"\n', "--no-deliver").start()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    idle = []
    try:
        # three kept-alive connections, each answered once: the server holds them
        for _ in range(3):
            answer, sock = raw_exchange(proc.url, request, keep=True)
            assert answer.startswith(b"HTTP/1.1 200")
            idle.append(sock)
        assert raw_exchange(proc.url, request) == b""  # a fourth: closed without an answer
        idle.pop().close()  # one leaves: a new one is served again
        deadline = time.monotonic() + 30
        while not raw_exchange(proc.url, request).startswith(b"HTTP/1.1 200"):
            assert time.monotonic() < deadline, "a closed connection's place was not freed"
            time.sleep(0.05)
    finally:
        for sock in idle:
            sock.close()
        assert proc.stop() == 0


# -- the queue's limits ----------------------------------------------------------------


async def test_a_full_queue_answers_503_with_retry_after_and_readyz_says_so(tmp_path):
    proc = ServeProcess(tmp_path, '[queue]\nmax_bytes = 2000\n'
                        '[outputs.a]\ntype = "file"\npath = "out.jsonl"\n', "--no-deliver").start()
    try:
        accepted = 0
        for n in range(100):
            status, headers, answer = await post(proc.url + "/", orjson.dumps(event(n)), auth=None)
            if status != 200:
                break
            accepted += 1
        assert status == 503 and headers["Retry-After"] == "5"
        assert "queue full" in answer["error"]
        assert 0 < accepted < 100
        async with aiohttp.ClientSession() as session:
            async with session.get(proc.url + "/readyz") as r:
                assert r.status == 503
                assert "full" in (await r.json())["error"]
            async with session.get(proc.url + "/healthz") as r:
                assert r.status == 200
    finally:
        assert proc.stop() == 0
    assert f"{accepted} events stay queued" in proc.stderr
