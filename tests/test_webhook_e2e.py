"""The webhook output end to end: the real ``nwpipe`` command in a subprocess, delivering
to real aiohttp servers on 127.0.0.1 run by the test (see conftest.py).

The CLI runs under ``asyncio.create_subprocess_exec`` so the in-process receivers keep
serving while it runs. Retry settings are small so every test is quick.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import random
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import Receiver

FAST_RETRY = "retry = { max_attempts = 5, initial_backoff = 0.01, max_backoff = 0.05 }"


# --- helpers -----------------------------------------------------------------------------


@dataclass
class Run:
    """What one ``nwpipe`` command did."""

    returncode: int
    stdout: str
    stderr: str
    dead_letter: Path

    def dead_letters(self) -> list[dict]:
        if not self.dead_letter.exists():
            return []
        return [orjson.loads(line) for line in self.dead_letter.read_bytes().splitlines()]


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nwpipe.toml"
    path.write_text(textwrap.dedent(text))
    return path


def child_env(env: dict | None = None) -> dict:
    full = {k: v for k, v in os.environ.items()
            if k != "NWPIPE_CONFIG" and not k.lower().endswith("_proxy")}
    full["NWPIPE_LOAD_PLUGINS"] = ""
    full.update(env or {})
    return full


async def start_nwpipe(tmp_path: Path, config: str, *args: str, env: dict | None = None,
                       command: str = "run"):
    """Start ``nwpipe COMMAND -c <config>`` (``run`` also gets ``--dead-letter``)."""
    path = write_config(tmp_path, config)
    extra = ["--dead-letter", str(tmp_path / "dead.jsonl")] if command == "run" else []
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", command, "-c", str(path), *extra, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=child_env(env))


async def finish(proc, tmp_path: Path, events=(), timeout: float = 30.0) -> Run:
    data = b"".join(orjson.dumps(e) + b"\n" for e in events)
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Run(proc.returncode, out.decode(), err.decode(), tmp_path / "dead.jsonl")


async def nwpipe(tmp_path: Path, config: str, events=(), *args: str, env: dict | None = None,
                 command: str = "run", timeout: float = 30.0) -> Run:
    """Run the real CLI to the end with ``events`` as JSON lines on stdin."""
    proc = await start_nwpipe(tmp_path, config, *args, env=env, command=command)
    return await finish(proc, tmp_path, events, timeout)


def event(alert: str, alerttype: str = "start", updatecount: int = 1, **extra) -> dict:
    return {"id": alert, "customer": "acme", "alerttype": alerttype,
            "updatecount": updatecount, "severity": "high", **extra}


def alert_stream(alerts: int, events: int, seed: int) -> list[dict]:
    """``events`` events over ``alerts`` alert ids, each alert start, ongoing..., end,
    interleaved at random (per-alert order kept)."""
    rng = random.Random(seed)
    per_alert = [events // alerts + (1 if i < events % alerts else 0) for i in range(alerts)]
    sequences = []
    for i, count in enumerate(per_alert):
        kinds = (["start"] + ["ongoing"] * (count - 2) + ["end"])[:count]
        sequences.append(collections.deque(
            event(f"alert-{i:03d}", kind, n + 1) for n, kind in enumerate(kinds)))
    stream = []
    while sequences:
        sequence = rng.choice(sequences)
        stream.append(sequence.popleft())
        if not sequence:
            sequences.remove(sequence)
    return stream


def per_alert(events) -> dict[str, list[tuple[str, int]]]:
    """Each alert's (alerttype, updatecount) in the order given."""
    seen: dict[str, list] = collections.defaultdict(list)
    for e in events:
        seen[e["id"]].append((e["alerttype"], e["updatecount"]))
    return dict(seen)


class OverlapWatch:
    """A receiver handler: answers after a random short delay and records, per alert id,
    how many requests carrying it were open at once and the order events arrived in."""

    def __init__(self, seed: int, max_delay: float = 0.01, parse=lambda r: [r.json()]):
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.parse = parse
        self.open: collections.Counter = collections.Counter()
        self.most_open = 0      # per alert id
        self.in_flight = 0
        self.most_in_flight = 0  # all requests
        self.arrived: list[dict] = []
        self.batch_sizes: list[int] = []

    async def __call__(self, request, record):
        events = self.parse(record)
        self.arrived.extend(events)
        self.batch_sizes.append(len(events))
        ids = {e["id"] for e in events}
        for alert in ids:
            self.open[alert] += 1
            self.most_open = max(self.most_open, self.open[alert])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.rng.random() * self.max_delay)
        finally:
            self.in_flight -= 1
            for alert in ids:
                self.open[alert] -= 1
        return web.Response(status=200)


class FixedPortReceiver(Receiver):
    """A Receiver on a port chosen beforehand, so that it can be started late."""

    def __init__(self, port: int):
        super().__init__()
        self.port = port

    async def start(self) -> FixedPortReceiver:
        server = web.Server(self._handle, auto_decompress=False, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self


def receiver_sorted(receiver: Receiver):
    return sorted(receiver.requests, key=lambda r: r.json()["id"])


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


# --- what arrives ------------------------------------------------------------------------


async def test_body_is_the_mapped_event_with_portal_settings(tmp_path, receiver):
    config = f"""
        [mappings.small]
        drop = ["metrics", "beta"]
        rename = {{ alerttype = "state" }}
        [mappings.small.fields]
        src_ip = "$.srcip[0]"
        title = "{{{{ algorithm | upper }}}} {{{{ alerttype }}}} for {{{{ customer }}}}"

        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/netography/{{{{ customer }}}}"
        mapping = "small"
        headers = "X-Netography: Webhook, X-Env: prod"
        authusername = "soc"
        authpassword = "${{SOC_PASSWORD}}"
        skipsslverification = false
        {FAST_RETRY}
    """
    events = [event("a-1", algorithm="portscan", srcip=["1.2.3.4", "5.6.7.8"],
                    metrics={"bits": {"max": 9}}, beta=False, note="é ✓ \"quoted\"")]
    run = await nwpipe(tmp_path, config, events, env={"SOC_PASSWORD": "pa:ss wörd"})
    assert run.returncode == 0, run.stderr
    assert "soc: 1 delivered" in run.stderr
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/netography/acme"
    assert request.json() == {
        "id": "a-1", "customer": "acme", "state": "start", "updatecount": 1,
        "severity": "high", "algorithm": "portscan", "srcip": ["1.2.3.4", "5.6.7.8"],
        "note": "é ✓ \"quoted\"", "src_ip": "1.2.3.4", "title": "PORTSCAN start for acme",
    }
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Netography"] == "Webhook"
    assert request.headers["X-Env"] == "prod"
    credentials = base64.b64encode("soc:pa:ss wörd".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {credentials}"
    assert request.headers["webhook-id"] == request.headers["Idempotency-Key"]
    assert request.headers["webhook-id"].startswith("nwp_")
    assert not run.dead_letter.exists()


async def test_500_then_200_is_retried_and_delivered_once(tmp_path, receiver):
    receiver.queue(500, body="try later")
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        {FAST_RETRY}
    """
    run = await nwpipe(tmp_path, config, [event("a-1")])
    assert run.returncode == 0, run.stderr
    assert "soc: 1 delivered, 1 retried" in run.stderr
    first, second = receiver.requests
    assert first.raw_body == second.raw_body
    # the same delivery id on every attempt: the receiver can deduplicate
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.headers["webhook-id"] == first.headers["Idempotency-Key"]
    assert not run.dead_letter.exists()


async def test_429_with_retry_after_waits_as_told(tmp_path, receiver):
    loop = asyncio.get_running_loop()
    arrivals = []

    async def clock(request, record):
        arrivals.append(loop.time())
        return None  # fall through to the queued replies

    receiver.handler = clock
    receiver.queue(429, headers={"Retry-After": "1"})
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        retry = {{ max_attempts = 3, initial_backoff = 0.01, max_backoff = 0.02 }}
    """
    run = await nwpipe(tmp_path, config, [event("a-1")])
    assert run.returncode == 0, run.stderr
    assert len(arrivals) == 2
    # the backoff alone would wait at most 0.02 s; Retry-After asks for 1 s
    assert 0.9 <= arrivals[1] - arrivals[0] < 10


@pytest.mark.parametrize("retry_after", ["0", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_retry_after_zero_or_past_waits_at_least_the_initial_backoff(
        tmp_path, receiver, retry_after):
    # a receiver whose clock lags answers with a date in the past (or 0): the waits
    # must not shrink to nothing, or the whole retry budget goes in milliseconds
    loop = asyncio.get_running_loop()
    arrivals = []

    async def busy(request, record):
        arrivals.append(loop.time())
        return web.Response(status=429, headers={"Retry-After": retry_after})
    receiver.handler = busy
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        retry = {{ initial_backoff = 0.25, max_backoff = 0.5, max_elapsed = 1.2 }}
    """
    run = await nwpipe(tmp_path, config, [event("a-1")])
    assert run.returncode == 3, run.stderr
    # 1.2 s of budget at no less than 0.25 s a wait: a handful of attempts, not thousands
    assert 2 <= len(arrivals) <= 6, arrivals
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert all(gap >= 0.24 for gap in gaps), gaps
    [record] = run.dead_letters()
    assert record["reason"].startswith(
        "output 'soc' failing for longer than retry.max_elapsed (1.2 s)"), record["reason"]


async def test_retry_after_longer_than_max_elapsed_says_so(tmp_path, receiver):
    receiver.reply(503, headers={"Retry-After": "600"})
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        retry = {{ max_attempts = 5, max_elapsed = 30 }}
    """
    run = await nwpipe(tmp_path, config, [event("a-1")])
    assert run.returncode == 3, run.stderr
    assert len(receiver.requests) == 1  # not waited for: it could never be retried in time
    [record] = run.dead_letters()
    assert record["reason"].startswith(
        "output 'soc' failing for longer than retry.max_elapsed (30 s)"), record["reason"]
    assert re.search(r": HTTP 503 Service Unavailable \(Retry-After asked for 600 s, more "
                     r"than the \d+\.\d s left of retry\.max_elapsed = 30 s\)$",
                     record["reason"]), record["reason"]
    assert "Retry-After asked for 600 s" in run.stderr


async def test_400_is_not_retried_and_is_dead_lettered(tmp_path, receiver):
    answer = "field 'x' is invalid; " + "y" * 2000
    receiver.queue(400, body=answer)
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        {FAST_RETRY}
    """
    events = [event("a-1"), event("a-2")]
    run = await nwpipe(tmp_path, config, events, "-q")
    assert run.returncode == 3, run.stderr
    assert len(receiver.requests) == 2  # one each: the 400 was not retried
    [record] = run.dead_letters()
    assert record["stage"] == "deliver"
    assert record["output"] == "soc"
    assert record["status"] == 400
    assert record["reason"] == "HTTP 400 Bad Request"
    assert record["response"] == answer[:1024]
    assert record["source"] == "<stdin>" and record["line"] in (1, 2)
    assert record["event"] == events[record["line"] - 1]
    [refused] = [r for r in receiver.requests if r.json() == record["event"]]
    assert record["delivery_id"] == refused.headers["webhook-id"]
    [attempt] = record["attempts"]
    assert attempt["outcome"] == "failed" and attempt["status"] == 400
    assert "soc: 1 event dead-lettered: HTTP 400 Bad Request" in run.stderr


async def test_connection_refused_then_the_server_comes_up(tmp_path, closed_port):
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "http://127.0.0.1:{closed_port}/hook"
        concurrency = 4
        retry = {{ max_attempts = 1000, initial_backoff = 0.05, max_backoff = 0.1, max_elapsed = 60 }}
    """
    events = alert_stream(alerts=5, events=20, seed=1)
    proc = await start_nwpipe(tmp_path, config, "-v")
    proc.stdin.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
    proc.stdin.close()
    # Wait until nwpipe has met the refused connection (-v shows each retry), however
    # long the start takes on a busy machine; only then does the receiver come up.
    seen = []
    deadline = asyncio.get_running_loop().time() + 60
    while not any(b"connection refused to 127.0.0.1" in line for line in seen):
        left = deadline - asyncio.get_running_loop().time()
        line = await asyncio.wait_for(proc.stderr.readline(), max(left, 0.01))
        assert line, b"".join(seen).decode()  # nwpipe ended without trying
        seen.append(line)
    assert proc.returncode is None
    late = await FixedPortReceiver(closed_port).start()
    try:
        run = await finish(proc, tmp_path, timeout=60)
    finally:
        await late.stop()
    assert run.returncode == 0, b"".join(seen).decode() + run.stderr
    got = [r.json() for r in late.requests]
    assert sorted(map(orjson.dumps, got)) == sorted(map(orjson.dumps, events))
    assert per_alert(got) == per_alert(events)
    assert not run.dead_letter.exists()


async def test_timeout_is_retried_then_dead_lettered_with_attempts(tmp_path, receiver):
    receiver.reply(200, delay=2.0)
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/slow"
        timeout = 0.2
        retry = {{ max_attempts = 2, initial_backoff = 0.01, max_backoff = 0.02, max_elapsed = 0.3 }}
    """
    run = await nwpipe(tmp_path, config, [event("a-1")])
    assert run.returncode == 3, run.stderr
    assert len(receiver.requests) >= 2  # max_attempts does not cut an outage short
    [record] = run.dead_letters()
    assert "failing for longer than retry.max_elapsed (0.3 s)" in record["reason"]
    assert "timed out after 0.2 s" in record["reason"]
    assert len(record["attempts"]) == len(receiver.requests)
    assert {a["outcome"] for a in record["attempts"]} == {"retry"}
    assert all("timed out" in a["reason"] for a in record["attempts"])
    assert "status" not in record


async def test_redirect_is_not_followed(tmp_path, receiver):
    receiver.queue(302, headers={"Location": "/elsewhere"})
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        {FAST_RETRY}
    """
    run = await nwpipe(tmp_path, config, [event("a-1")])
    assert run.returncode == 3, run.stderr
    assert [r.path for r in receiver.requests] == ["/hook"]
    [record] = run.dead_letters()
    assert record["status"] == 302
    assert "not followed" in record["reason"] and "/elsewhere" in record["reason"]


# --- TLS -----------------------------------------------------------------------------------


async def test_tls_is_verified_by_default(tmp_path, tls_receiver):
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{tls_receiver.url}/hook"
        {FAST_RETRY}
    """
    run = await nwpipe(tmp_path, config, [event("a-1")])
    assert run.returncode == 3
    assert tls_receiver.requests == []
    [record] = run.dead_letters()
    assert "certificate verify failed" in record["reason"]
    assert len(record["attempts"]) == 1  # a certificate problem is not retried
    assert "Traceback" not in run.stderr


async def test_tls_with_ca_file(tmp_path, tls_receiver, tls):
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{tls_receiver.url}/hook"
        ca_file = "{tls.ca_file}"
        {FAST_RETRY}
    """
    run = await nwpipe(tmp_path, config, [event("a-1"), event("a-2")])
    assert run.returncode == 0, run.stderr
    assert [r.json()["id"] for r in receiver_sorted(tls_receiver)] == ["a-1", "a-2"]
    assert "NOT verified" not in run.stderr


@pytest.mark.parametrize("name", ["skip_ssl_verification", "skipsslverification"])
async def test_tls_skip_verification_warns_once(tmp_path, tls_receiver, name):
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{tls_receiver.url}/hook"
        {name} = true
        {FAST_RETRY}
    """
    events = [event(f"a-{i}") for i in range(5)]
    run = await nwpipe(tmp_path, config, events)
    assert run.returncode == 0, run.stderr
    assert len(tls_receiver.requests) == 5
    assert run.stderr.count("is NOT verified") == 1
    assert "outputs.soc: skip_ssl_verification is on" in run.stderr


# --- signing -------------------------------------------------------------------------------


async def test_signature_verifies_with_standardwebhooks_across_retries(tmp_path, receiver):
    secret = new_secret()
    receiver.queue(503)
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        signing_secret = "${{SIGNING_SECRET}}"
        {FAST_RETRY}
    """
    events = [event("a-1"), event("a-1", "end", 2)]
    run = await nwpipe(tmp_path, config, events, env={"SIGNING_SECRET": secret})
    assert run.returncode == 0, run.stderr
    assert len(receiver.requests) == 3
    verifier = Webhook(secret)
    for request in receiver.requests:
        assert verifier.verify(request.raw_body, dict(request.headers)) == request.json()
    # the retried request carries the same id, and so is signed over the same id
    first, retried, end = receiver.requests
    assert first.headers["webhook-id"] == retried.headers["webhook-id"]
    assert end.headers["webhook-id"] != first.headers["webhook-id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(first.raw_body, dict(first.headers))


# --- ordering, isolation, batches -----------------------------------------------------------


async def test_per_alert_order_at_concurrency_32_with_random_delays(tmp_path, receiver):
    watch = OverlapWatch(seed=32)
    receiver.handler = watch
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        concurrency = 32
        {FAST_RETRY}
    """
    events = alert_stream(alerts=40, events=400, seed=32)
    run = await nwpipe(tmp_path, config, events)
    assert run.returncode == 0, run.stderr
    assert len(watch.arrived) == 400
    assert per_alert(watch.arrived) == per_alert(events)
    assert watch.most_open == 1  # never two requests of one alert at once ...
    assert watch.most_in_flight > 1  # ... while different alerts went concurrently


async def test_concurrency_sizes_the_connection_pool(tmp_path, receiver):
    """With concurrency = 32 (more than the webhook default, 16), 32 requests are open
    at once over at most 32 kept-alive connections."""
    open_now = 0
    most = 0
    full = asyncio.Event()

    async def hold(request, record):
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        if open_now >= 32:
            full.set()
        try:
            # the first round waits until all 32 are open (or gives up after 3 s)
            await asyncio.wait_for(full.wait(), 3)
        except asyncio.TimeoutError:
            pass
        finally:
            open_now -= 1
        return web.Response(status=200)

    receiver.handler = hold
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        concurrency = 32
        {FAST_RETRY}
    """
    run = await nwpipe(tmp_path, config, [event(f"a-{i}") for i in range(96)])
    assert run.returncode == 0, run.stderr
    assert most == 32
    assert len({r.peer for r in receiver.requests}) <= 32


async def test_a_down_output_does_not_block_a_healthy_one(tmp_path, receiver, closed_port):
    config = f"""
        [outputs.healthy]
        type = "webhook"
        url = "{receiver.url}/hook"
        {FAST_RETRY}

        [outputs.down]
        type = "webhook"
        url = "http://127.0.0.1:{closed_port}/hook"
        queue_size = 10
        retry = {{ max_attempts = 1000, initial_backoff = 0.1, max_backoff = 0.3, max_elapsed = 3 }}
    """
    # one event per alert: the down output's accepted events all retry at once, for
    # about max_elapsed (at least 2.7 s), then give up
    events = [event(f"a-{i:03d}") for i in range(200)]
    proc = await start_nwpipe(tmp_path, config)
    running = asyncio.ensure_future(finish(proc, tmp_path, events))
    await receiver.wait_for(200, timeout=15)
    # everything reached the healthy output while the down one was still retrying
    assert not running.done()
    run = await running
    assert run.returncode == 3
    assert sorted(r.json()["id"] for r in receiver.requests) == [e["id"] for e in events]
    records = run.dead_letters()
    assert {r["output"] for r in records} == {"down"}
    assert sorted(orjson.dumps(r["event"]) for r in records) == sorted(map(orjson.dumps, events))
    retried = [r for r in records if r["attempts"]]
    assert retried and all("connection refused" in r["attempts"][-1]["reason"] for r in retried)
    # (a run of a second or more also shows each output's rate)
    assert re.search(r"healthy: 200 delivered( \([\d,]+/s\))?; down: 0 delivered", run.stderr)


@pytest.mark.parametrize("fmt, content_type", [("json_array", "application/json"),
                                               ("ndjson", "application/x-ndjson")])
async def test_batch_formats_deliver_every_event_once_in_order(tmp_path, receiver, fmt,
                                                               content_type):
    parse = (lambda r: r.json()) if fmt == "json_array" else (lambda r: r.ndjson())
    watch = OverlapWatch(seed=7, parse=parse)
    receiver.handler = watch
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/hook"
        concurrency = 8
        batch = {{ max_events = 10, format = "{fmt}" }}
        {FAST_RETRY}
    """
    events = alert_stream(alerts=30, events=300, seed=7)
    run = await nwpipe(tmp_path, config, events)
    assert run.returncode == 0, run.stderr
    # exactly once
    assert sorted(map(orjson.dumps, watch.arrived)) == sorted(map(orjson.dumps, events))
    assert per_alert(watch.arrived) == per_alert(events)
    assert watch.most_open == 1
    assert max(watch.batch_sizes) == 10 and len(receiver.requests) < 300
    assert {r.headers["Content-Type"] for r in receiver.requests} == {content_type}
    if fmt == "json_array":
        assert all(isinstance(r.json(), list) for r in receiver.requests)
    else:
        assert all(r.body.endswith(b"\n") for r in receiver.requests)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(set(ids)) == len(ids)


# --- secrets and `nwpipe check` --------------------------------------------------------------


SECRETS = {
    "SOC_PASSWORD": "pw-Zq81-soc",
    "SOC_TOKEN": "tok-Xk27-bearer",
    "SOC_SIGNING": new_secret(),
    "SOC_API_KEY": "key-Mm55-header",
    "URL_TOKEN": "qs-Vb09-url",
}


def secret_config(url: str) -> str:
    return f"""
        [outputs.basic]
        type = "webhook"
        url = "{url}/basic?token=${{URL_TOKEN}}"
        username = "soc"
        password = "${{SOC_PASSWORD}}"
        signing_secret = "${{SOC_SIGNING}}"
        headers = "X-Netography: Webhook, X-Env: prod"
        retry = {{ max_attempts = 2, initial_backoff = 0.01, max_backoff = 0.02 }}

        [outputs.bearer]
        type = "webhook"
        url = "{url}/bearer"
        bearer_token = "${{SOC_TOKEN}}"
        headers = {{ "X-Api-Key" = "${{SOC_API_KEY}}" }}
        retry = {{ max_attempts = 2, initial_backoff = 0.01, max_backoff = 0.02 }}
    """


def forbidden() -> list[str]:
    basic = base64.b64encode(f"soc:{SECRETS['SOC_PASSWORD']}".encode()).decode()
    signing_key = SECRETS["SOC_SIGNING"][len("whsec_"):]
    return [*SECRETS.values(), basic, signing_key]


async def test_check_describes_webhooks_without_secrets(tmp_path, receiver):
    run = await nwpipe(tmp_path, secret_config(receiver.url), command="check", env=SECRETS)
    assert run.returncode == 0, run.stderr
    text = run.stdout + run.stderr
    for secret in forbidden():
        assert secret not in text
    assert f"basic: type webhook; webhook POST {receiver.url}/basic?…" in run.stdout
    assert "basic auth" in run.stdout and "headers X-Netography, X-Env" in run.stdout
    assert "signed" in run.stdout
    assert f"bearer: type webhook; webhook POST {receiver.url}/bearer (bearer token" in run.stdout
    assert "headers X-Api-Key" in run.stdout


async def test_secrets_never_appear_in_stderr_or_the_dead_letter_file(tmp_path, receiver):
    async def echo(request, record):
        # a receiver that echoes what it got, credentials included, with an error
        echoed = "\n".join(f"{k}: {v}" for k, v in record.headers.items())
        auth = record.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            echoed += "\ncredentials " + base64.b64decode(auth[6:]).decode()
        return web.Response(status=400, text=f"bad request:\n{echoed}")

    receiver.handler = echo
    run = await nwpipe(tmp_path, secret_config(receiver.url), [event("a-1"), event("a-2")], "-v",
                       env=SECRETS)
    assert run.returncode == 3
    assert len(receiver.requests) == 4  # 2 events x 2 outputs
    # the secrets did go over the wire ...
    assert receiver.requests[0].headers["Authorization"].startswith(("Basic ", "Bearer "))
    text = run.stdout + run.stderr + run.dead_letter.read_text()
    records = run.dead_letters()
    assert len(records) == 4 and all(r["status"] == 400 for r in records)
    assert all("***" in r["response"] for r in records)
    # ... and nowhere else
    for secret in forbidden():
        assert secret not in text, secret


async def test_config_errors_about_the_url_do_not_show_credentials(tmp_path):
    config = """
        [outputs.soc]
        type = "webhook"
        url = "ftp://soc:pw-Zq81-soc@ftp.example.com/in?token=qs-Vb09-url"
    """
    run = await nwpipe(tmp_path, config, command="check")
    assert run.returncode == 1
    assert "outputs.soc.url: url must start with http:// or https:// (got ftp://...)" in run.stderr
    assert "pw-Zq81" not in run.stderr and "qs-Vb09" not in run.stderr


# --- the URL's path token and the receiver's words -------------------------------------------

SLACK_TOKEN = "Zk3vQ9xLmW2pR7tY8uN4bC1d"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_url_path_token_echoed_by_the_receiver_is_redacted_everywhere(
        tmp_path, receiver, log_format):
    # Slack keeps its secret in the path; a receiver echoes it in a Location (a 3xx
    # not followed) and in a 404 body. Neither stderr (-v, text or JSON), nor the dead
    # letters show it.
    path = f"/services/T0123ABCD/B0123ABCD/{SLACK_TOKEN}"

    async def echo(request, record):
        if record.json()["id"] == "a-1":
            return web.Response(status=302, headers={"Location": f"{request.path}/moved"})
        return web.Response(status=404, text=f"no such hook: {request.path}")
    receiver.handler = echo
    config = f"""
        [outputs.slack]
        type = "webhook"
        url = "{receiver.url}{path}"
        {FAST_RETRY}
    """
    run = await nwpipe(tmp_path, config, [event("a-1"), event("a-2")], "-v",
                       "--log-format", log_format)
    assert run.returncode == 3, run.stderr
    assert [r.path for r in receiver.requests] == [path, path]  # the token was sent
    redirect, missing = sorted(run.dead_letters(), key=lambda r: r["status"])
    assert redirect["status"] == 302
    assert "/services/T0123ABCD/B0123ABCD/***/moved" in redirect["reason"]
    assert missing["status"] == 404
    assert missing["response"] == "no such hook: /services/T0123ABCD/B0123ABCD/***"
    assert "redirect" in run.stderr and "404" in run.stderr
    text = run.stdout + run.stderr + run.dead_letter.read_text()
    assert SLACK_TOKEN not in text


async def test_probe_redacts_the_path_token_and_cannot_be_spoofed(tmp_path, receiver):
    # a 400 body that echoes the URL and tries to rewrite the verdict line with a CR
    # and escape sequences into a fake "OK"
    async def spoof(request, record):
        return web.Response(status=400, text=f"bad {request.path}\r\x1b[2K\x1b[1A"
                                             "  slack: OK (HTTP 200 in 3 ms)\x07")
    receiver.handler = spoof
    config = f"""
        [outputs.slack]
        type = "webhook"
        url = "{receiver.url}/services/T0123ABCD/B0123ABCD/{SLACK_TOKEN}"
    """
    run = await nwpipe(tmp_path, config, (), "--probe", command="check")
    assert run.returncode != 0
    text = run.stdout + run.stderr
    assert SLACK_TOKEN not in text
    for control in ("\r", "\x1b", "\x07"):
        assert control not in text
    [line] = [line for line in run.stdout.splitlines() if "HTTP 400" in line]
    assert line.strip().startswith("slack: HTTP 400"), line
    assert "the receiver said: bad /services/T0123ABCD/B0123ABCD/***" in line


# a short ${ENV} value in the URL: too short to look like a token, a secret all the same
SHORT = {"HOOK_ID": "k7", "HOOK_CODE": "q1x"}


def short_secret_config(url: str) -> str:
    return f"""
        [outputs.hook]
        type = "webhook"
        url = "{url}/hooks/${{HOOK_ID}}/in?code=${{HOOK_CODE}}"
        headers = {{ "X-Tenant" = "${{HOOK_CODE}}" }}
        {FAST_RETRY}
    """


async def test_short_env_value_in_the_url_is_never_shown(tmp_path, receiver):
    async def echo(request, record):
        return web.Response(status=404, reason=f"No {request.path_qs}",
                            text=f"no hook at {request.path_qs} for "
                                 f"{request.headers.get('X-Tenant')}")
    receiver.handler = echo
    config = short_secret_config(receiver.url)
    check = await nwpipe(tmp_path, config, command="check", env=SHORT)
    assert check.returncode == 0, check.stderr
    assert f"hook: type webhook; webhook POST {receiver.url}/hooks/…/in?…" in check.stdout
    probe = await nwpipe(tmp_path, config, (), "--probe", command="check", env=SHORT)
    assert "HTTP 404" in probe.stdout, probe.stdout + probe.stderr
    run = await nwpipe(tmp_path, config, [event("a-1")], "-v", env=SHORT)
    assert run.returncode == 3, run.stderr
    # the values did go over the wire ...
    assert receiver.requests[-1].path == "/hooks/k7/in"
    [record] = run.dead_letters()
    assert record["response"] == "no hook at /hooks/***/in?*** for ***"
    # ... and nowhere else
    for text in (check.stdout + check.stderr, probe.stdout + probe.stderr,
                 run.stdout + run.stderr + run.dead_letter.read_text()):
        assert "/k7" not in text and "q1x" not in text, text
