"""The README's Standard Webhooks receiver (examples/standardwebhooks_receiver.py, shown
verbatim in the README) verifies real nwpipe deliveries in every body format: one event,
json_array and ndjson batches, each also gzip-compressed."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import re
import secrets
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "standardwebhooks_receiver.py"

_spec = importlib.util.spec_from_file_location("standardwebhooks_receiver", EXAMPLE)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def events(count: int) -> list[dict]:
    return [{"id": f"alert-{i:03d}", "customer": "acme", "alerttype": "start",
             "updatecount": 1, "severity": "high", "summary": f"ünïcödé {i}\n\"quoted\""}
            for i in range(count)]


def child_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k != "NWPIPE_CONFIG" and not k.lower().endswith("_proxy")}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    env.update(extra)
    return env


async def run_nwpipe(tmp_path: Path, url: str, secret: str, options: str,
                     stream: list[dict]) -> None:
    """Deliver ``stream`` through the real CLI; every event must be delivered."""
    config = tmp_path / "nwpipe.toml"
    config.write_text(textwrap.dedent(f"""
        [outputs.signed]
        type = "webhook"
        url = "{url}"
        signing_secret = "${{SIGNING_SECRET}}"
        {options}
    """))
    dead = tmp_path / "dead.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", "run", "-c", str(config), "--dead-letter", str(dead),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=child_env({"SIGNING_SECRET": secret}))
    data = b"".join(orjson.dumps(e) + b"\n" for e in stream)
    try:
        _, err = await asyncio.wait_for(proc.communicate(data), 60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    assert not dead.exists() or not dead.read_text().strip(), dead.read_text()


FORMATS = {
    "single": "",
    "json_array": 'batch = { max_events = 10, max_wait = 5, format = "json_array" }',
    "ndjson": 'batch = { max_events = 10, max_wait = 5, format = "ndjson" }',
    "single gzip": 'compression = "gzip"',
    "json_array gzip": 'compression = "gzip"\n'
                       'batch = { max_events = 10, max_wait = 5, format = "json_array" }',
    "ndjson gzip": 'compression = "gzip"\n'
                   'batch = { max_events = 10, max_wait = 5, format = "ndjson" }',
}


@pytest.mark.parametrize("name", sorted(FORMATS))
async def test_every_format_verifies_and_gives_every_event(tmp_path, receiver, name):
    secret = new_secret()
    stream = events(25)
    await run_nwpipe(tmp_path, f"{receiver.url}/hook", secret, FORMATS[name], stream)
    verifier = Webhook(secret)
    received = []
    for request in receiver.requests:
        received += example.verified_events(verifier, request.raw_body, dict(request.headers))
    assert sorted(received, key=lambda e: e["id"]) == stream  # each event once, intact
    batched = [r for r in receiver.requests if r.headers["webhook-id"].startswith("batch_")]
    if "json_array" in name or "ndjson" in name:
        assert batched, "no request carried a batch"
        kind = "application/x-ndjson" if "ndjson" in name else "application/json"
        assert all(r.headers["Content-Type"].startswith(kind) for r in batched)
    else:
        assert len(receiver.requests) == len(stream) and not batched
    gzipped = [r.headers.get("Content-Encoding") == "gzip" for r in receiver.requests]
    assert all(gzipped) if "gzip" in name else not any(gzipped)

    # altered bytes, another secret, or a stale timestamp are refused
    request = receiver.requests[0]
    headers = dict(request.headers)
    with pytest.raises(WebhookVerificationError):
        example.verified_events(Webhook(new_secret()), request.raw_body, headers)
    if "gzip" not in name:
        with pytest.raises(WebhookVerificationError):
            example.verified_events(verifier, request.raw_body.replace(b"acme", b"acne"), headers)
    stale = dict(headers, **{"webhook-timestamp": str(int(time.time()) - 3600)})
    with pytest.raises(WebhookVerificationError):
        example.verified_events(verifier, request.raw_body, stale)


async def test_plain_verify_cannot_read_an_ndjson_batch(tmp_path, receiver):
    """Why the example verifies with json_parse=False: verify() parses the body as one
    JSON document, which an ndjson batch of several events is not."""
    secret = new_secret()
    await run_nwpipe(tmp_path, f"{receiver.url}/hook", secret, FORMATS["ndjson"], events(5))
    request = next(r for r in receiver.requests if r.headers["webhook-id"].startswith("batch_"))
    with pytest.raises(ValueError):
        Webhook(secret).verify(request.raw_body, dict(request.headers))
    assert len(example.verified_events(Webhook(secret), request.raw_body,
                                       dict(request.headers))) > 1


def test_gzip_bombs_are_refused():
    import gzip
    with pytest.raises(ValueError, match="too large"):
        example.gunzip(gzip.compress(b"\0" * (example.MAX_BODY + 1)))
    with pytest.raises(ValueError, match="cut short"):
        example.gunzip(gzip.compress(b"x" * 1000)[:-12])


async def wait_for_port(log: Path, deadline: float) -> int:
    """The port the example says it listens on, read from its log before the deadline."""
    while time.monotonic() < deadline:
        match = re.search(r"listening on port (\d+)", log.read_text(errors="replace"))
        if match:
            return int(match[1])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the receiver did not start: {log.read_text(errors='replace')}")


async def test_the_example_receiver_program_takes_every_format(tmp_path):
    """The example run as its own program; nwpipe delivers to it in each format and every
    event comes out of it exactly once."""
    secret = new_secret()
    log = tmp_path / "receiver.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), "0", stdout=asyncio.subprocess.PIPE, stderr=err,
            env=child_env({"WEBHOOK_SECRET": secret}))
    try:
        deadline = time.monotonic() + 60
        port = await wait_for_port(log, deadline)
        sent = []
        for i, name in enumerate(sorted(FORMATS)):
            stream = [dict(e, id=f"{name}-{e['id']}") for e in events(12)]
            sent += stream
            run_dir = tmp_path / str(i)
            run_dir.mkdir()
            await run_nwpipe(run_dir, f"http://127.0.0.1:{port}/hook", secret,
                             FORMATS[name], stream)
        received = []
        while len(received) < len(sent):
            line = await asyncio.wait_for(proc.stdout.readline(),
                                          max(0.1, deadline - time.monotonic()))
            assert line, "the receiver stopped: " + log.read_text(errors="replace")
            received.append(orjson.loads(line))
        assert sorted(received, key=lambda e: e["id"]) == sorted(sent, key=lambda e: e["id"])
        assert " 401 " not in log.read_text() and " 400 " not in log.read_text()
    finally:
        proc.kill()
        await proc.wait()


def test_the_readme_shows_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- section:webhook -->")[1].split("<!-- /section:webhook -->")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert EXAMPLE.read_text() in blocks
