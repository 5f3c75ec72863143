"""The webhook output against real aiohttp receivers on 127.0.0.1 (see conftest.py).

Each test drives the output as the engine does: ``open()``, ``send([...])``,
``close()``, and asserts on what the receiver got and on the reported result.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import logging
import os
import time

import pluggy
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import nwpipe
import nwpipe.hookspecs
from nwpipe import Delivered, Failed, Retry
from nwpipe.errors import ConfigError
from nwpipe.settings import validate_settings
from nwpipe_plugins import webhook
from nwpipe_plugins.webhook import WebhookOutput


def make_output(**table) -> WebhookOutput:
    """Load a webhook output the way the core does: validate, cross-check, construct."""
    config = validate_settings(table, WebhookOutput.settings, key="outputs.soc")
    WebhookOutput.check_config(config)
    return WebhookOutput("soc", config)


async def send_once(output: WebhookOutput, batch):
    await output.open()
    try:
        return await output.send(batch)
    finally:
        await output.close()


def load_error(**table) -> str:
    """The message a bad config gives at load (ConfigError or ValueError)."""
    with pytest.raises((ConfigError, ValueError)) as info:
        make_output(**table)
    return str(info.value)


# --- what is sent ------------------------------------------------------------------------


async def test_body_is_the_mapped_event_with_identity_headers(receiver, make_delivery):
    body = {"event_id": "00edee24", "state": "start", "src_ip": "1.2.3.4", "note": "é ✓"}
    delivery = make_delivery(body=body)
    output = make_output(url=receiver.url + "/netography")

    assert await send_once(output, [delivery]) == Delivered()

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/netography"
    assert request.json() == body
    assert request.raw_body == delivery.body_json()  # the very bytes, not re-serialised
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"nwpipe/{nwpipe.__version__}"
    assert request.headers["webhook-id"] == delivery.id
    assert request.headers["Idempotency-Key"] == delivery.id
    assert "Authorization" not in request.headers
    assert "webhook-signature" not in request.headers


async def test_basic_auth_header_is_exact(receiver, make_delivery):
    output = make_output(url=receiver.url, username="soc", password="s3cret")
    assert await send_once(output, [make_delivery()]) == Delivered()
    # base64("soc:s3cret")
    assert receiver.requests[0].headers["Authorization"] == "Basic c29jOnMzY3JldA=="


async def test_portal_setting_names_are_accepted(receiver, make_delivery):
    output = make_output(url=receiver.url, authusername="soc", authpassword="pässwörd",
                         skipsslverification=False, headers="X-Netography: Webhook")
    assert await send_once(output, [make_delivery()]) == Delivered()
    expected = base64.b64encode("soc:pässwörd".encode()).decode()
    assert receiver.requests[0].headers["Authorization"] == f"Basic {expected}"
    assert receiver.requests[0].headers["X-Netography"] == "Webhook"


async def test_bearer_token(receiver, make_delivery):
    output = make_output(url=receiver.url, bearer_token="tok-123")
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert receiver.requests[0].headers["Authorization"] == "Bearer tok-123"


async def test_put_method(receiver, make_delivery):
    output = make_output(url=receiver.url + "/put-here", method="put")
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert receiver.requests[0].method == "PUT"
    assert receiver.requests[0].json()["id"] == make_delivery().event["id"]


async def test_connection_is_kept_alive_between_sends(receiver, make_delivery):
    output = make_output(url=receiver.url)
    await output.open()
    try:
        for _ in range(3):
            assert await output.send([make_delivery()]) == Delivered()
    finally:
        await output.close()
    assert len({request.peer for request in receiver.requests}) == 1


# --- headers ---------------------------------------------------------------------------


async def test_portal_header_list_with_colons_spaces_and_empty_items(receiver, make_delivery):
    headers = ("X-Netography: Webhook, X-Callback: https://cb.example:8443/a?b=c ,"
               " X-Note:  two words  ,, X-Empty:,")
    output = make_output(url=receiver.url, headers=headers)
    assert await send_once(output, [make_delivery()]) == Delivered()
    got = receiver.requests[0].headers
    assert got["X-Netography"] == "Webhook"
    assert got["X-Callback"] == "https://cb.example:8443/a?b=c"
    assert got["X-Note"] == "two words"
    assert got["X-Empty"] == ""


async def test_header_table_with_templated_value(receiver, make_delivery, make_event):
    output = make_output(url=receiver.url, headers={
        "X-Netography": "Webhook, with a comma",
        "X-Customer": "{{ customer | upper }}-{{ alerttype }}",
        "Content-Type": "application/vnd.soc+json",
    })
    assert await send_once(output, [make_delivery(event=make_event(customer="acme"))]) == Delivered()
    got = receiver.requests[0].headers
    assert got["X-Netography"] == "Webhook, with a comma"
    assert got["X-Customer"] == "ACME-start"
    assert got.getall("Content-Type") == ["application/vnd.soc+json"]


@pytest.mark.parametrize("headers, named", [
    ("X-Ok: 1, X Bad: 2", "X Bad"),
    ("X-Ok: 1, X-Split: a\r\nX-Injected: b", "X-Split"),
    ({"X-Split": "a\nb"}, "X-Split"),
    ({"X-Name\r\n": "v"}, "X-Name"),
    ({"X(bad)": "v"}, "X(bad)"),
    ("X-Ok: 1, no colon here", "item 2 (starting 'no')"),
    ({"X-Ctl": "a\x0bb"}, "X-Ctl"),
    ("X-Ok: 1, X-Del: a\x7fb", "X-Del"),
    ("webhook-id: mine", "webhook-id"),
    ("Content-Encoding: br", "Content-Encoding"),
    ("X-A: 1, x-a: 2", "x-a"),
    ({"X-Broken": "{{ customer "}, "X-Broken"),
])
def test_bad_headers_are_rejected_at_load(headers, named):
    message = load_error(url="http://127.0.0.1/x", headers=headers)
    assert "outputs.soc.headers" in message
    assert named in message


def test_header_value_is_not_shown_when_rejected():
    message = load_error(url="http://127.0.0.1/x", headers={"X-Api-Key": "k3y-v4lue\r\nX: y"})
    assert "X-Api-Key" in message
    assert "k3y-v4lue" not in message


def test_header_item_without_colon_does_not_show_its_value():
    message = load_error(url="http://127.0.0.1/x", headers="X-Api-Key supersecret123, X-B: c")
    assert "header item 1 (starting 'X-Api-Key') has no ':'" in message
    assert "supersecret123" not in message


@pytest.mark.parametrize("value", ["a\x0bb", "a\x7fb", "a\x1b[2Jb", "a\x0cb"])
def test_header_values_with_control_characters_are_rejected_at_load(value):
    for headers in ({"X-Api-Key": value}, f"X-Api-Key: {value}"):
        message = load_error(url="http://127.0.0.1/x", headers=headers)
        assert "X-Api-Key" in message and "control character" in message
        assert value not in message
    assert "control character" in load_error(url="http://127.0.0.1/x", bearer_token=value)
    assert "control character" in load_error(url="http://127.0.0.1/x", content_type=value)


def test_a_nul_is_named_as_a_nul_not_as_a_line_break():
    for table in ({"headers": {"X-Api-Key": "a\0b"}}, {"bearer_token": "a\0b"},
                  {"username": "so\0c"}, {"username": "soc", "password": "p\0w"}):
        message = load_error(url="http://127.0.0.1/x", **table)
        assert "NUL character (U+0000)" in message and "line break" not in message, message
    message = load_error(url="http://127.0.0.1/x", headers={"X-A": "a\rb"})
    assert "line break (CR or LF)" in message


async def test_templated_header_rendering_a_nul_names_the_nul(receiver, make_delivery,
                                                             make_event):
    output = make_output(url=receiver.url, headers={"X-Customer": "{{ customer }}"})
    result = await send_once(output, [make_delivery(event=make_event(customer="a\0b"))])
    assert result == Failed("header 'X-Customer': rendered value contains a NUL character "
                            "(U+0000)")


async def test_header_and_url_templates_render_nwpipe_filters(receiver, make_delivery,
                                                              make_event):
    # one Jinja environment for mappings, conditions, URLs and headers
    output = make_output(url=receiver.url + "/at/{{ start | isotime }}",
                         headers={"X-Start": "{{ start | isotime }}"})
    event = make_event(start=1689391131)
    assert await send_once(output, [make_delivery(event=event)]) == Delivered()
    [request] = receiver.requests
    assert request.headers["X-Start"] == "2023-07-15T03:18:51Z"
    assert request.path == "/at/2023-07-15T03%3A18%3A51Z"  # every value is escaped


async def test_receiver_body_is_kept_with_its_lines_but_without_control_characters(
        receiver, make_delivery):
    receiver.reply(status=400, body="line one\n\tline two\r\x1b[2Kforged\x00")
    result = await send_once(make_output(url=receiver.url), [make_delivery()])
    assert result.response == "line one\n\tline two[2Kforged"


async def test_header_value_may_hold_a_tab(receiver, make_delivery):
    output = make_output(url=receiver.url, headers={"X-Note": "a\tb"})
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert receiver.requests[0].headers["X-Note"] == "a\tb"


@pytest.mark.parametrize("char", ["\x0b", "\x7f", "\x1b"])
async def test_templated_header_rendering_a_control_character_fails_that_event(
        receiver, make_delivery, make_event, char):
    output = make_output(url=receiver.url, headers={"X-Customer": "{{ customer }}"})
    result = await send_once(output, [make_delivery(event=make_event(customer=f"a{char}b"))])
    assert isinstance(result, Failed)
    assert "X-Customer" in result.reason and "control character" in result.reason
    assert receiver.requests == []


async def test_templated_header_rendering_a_line_break_fails_that_event(
        receiver, make_delivery, make_event):
    output = make_output(url=receiver.url, headers={"X-Customer": "{{ customer }}"})
    event = make_event(customer="acme\r\nX-Evil: 1")
    result = await send_once(output, [make_delivery(event=event)])
    assert isinstance(result, Failed)
    assert "X-Customer" in result.reason
    assert receiver.requests == []


# --- URL -------------------------------------------------------------------------------


async def test_templated_path_and_query_are_percent_encoded(receiver, make_delivery, make_event):
    output = make_output(url=receiver.url + "/hooks/{{ customer }}?site={{ site }}&v=1")
    event = make_event(customer="acme/../x y", site="a&b=c#d?e")
    assert await send_once(output, [make_delivery(event=event)]) == Delivered()
    assert receiver.requests[0].target == "/hooks/acme%2F..%2Fx%20y?site=a%26b%3Dc%23d%3Fe&v=1"


async def test_templated_path_cannot_climb_out_with_dot_segments(
        receiver, make_delivery, make_event):
    output = make_output(url=receiver.url + "/hooks/{{ customer }}/in")
    result = await send_once(output, [make_delivery(event=make_event(customer=".."))])
    assert isinstance(result, Failed)
    assert receiver.requests == []


async def test_templated_url_with_undefined_name_fails_that_event(receiver, make_delivery):
    output = make_output(url=receiver.url + "/hooks/{{ no_such_field }}")
    result = await send_once(output, [make_delivery()])
    assert isinstance(result, Failed)
    assert "no_such_field" in result.reason


@pytest.mark.parametrize("url", [
    "http://{{ host }}/x",
    "https://example.com{{ suffix }}/x",
    "https://127.0.0.1:{{ port }}/x",
    "{{ scheme }}://example.com/x",
    "https://{% if 1 %}evil.example{% endif %}/x",
])
def test_scheme_host_and_port_cannot_be_templated(url):
    message = load_error(url=url)
    assert "outputs.soc.url" in message
    assert "path and query only" in message or "http:// or https://" in message


@pytest.mark.parametrize("url, problem", [
    ("ftp://example.com/x", "http:// or https://"),
    ("example.com/x", "http:// or https://"),
    ("https://user:pw@example.com/x", "credentials"),
    ("https:///x", "no host"),
])
def test_bad_urls_are_rejected_at_load(url, problem):
    message = load_error(url=url)
    assert problem in message
    assert "pw" not in message.replace("https://", "")


async def test_batch_with_templated_url_goes_to_each_customer(receiver, make_delivery, make_event):
    output = make_output(url=receiver.url + "/hooks/{{ customer }}", batch_format="json_array")
    batch = [make_delivery(event=make_event(customer=c, updatecount=n))
             for n, c in enumerate(["acme", "globex", "acme"])]
    assert await send_once(output, batch) == Delivered()
    by_path = {request.path: request.json() for request in receiver.requests}
    assert sorted(by_path) == ["/hooks/acme", "/hooks/globex"]
    assert [e["updatecount"] for e in by_path["/hooks/acme"]] == [0, 2]
    assert by_path["/hooks/globex"]["customer"] == "globex"  # a group of one: body alone


# --- outcomes --------------------------------------------------------------------------


async def test_500_is_retried_with_status_and_body(receiver, make_delivery):
    receiver.reply(status=500, body="database is down")
    result = await send_once(make_output(url=receiver.url), [make_delivery()])
    assert result == Retry("HTTP 500 Internal Server Error", after=None, status=500,
                           response="database is down")


@pytest.mark.parametrize("status", [408, 429, 502, 503])
async def test_temporary_statuses_are_retried(receiver, make_delivery, status):
    receiver.reply(status=status)
    result = await send_once(make_output(url=receiver.url), [make_delivery()])
    assert isinstance(result, Retry)
    assert result.status == status


async def test_retry_after_in_seconds(receiver, make_delivery):
    receiver.reply(status=429, headers={"Retry-After": "7"})
    result = await send_once(make_output(url=receiver.url), [make_delivery()])
    assert isinstance(result, Retry)
    assert result.after == 7.0
    assert result.reason == "HTTP 429 Too Many Requests"


async def test_retry_after_as_http_date(receiver, make_delivery):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    receiver.reply(status=503, headers={"Retry-After": when})
    result = await send_once(make_output(url=receiver.url), [make_delivery()])
    assert isinstance(result, Retry)
    assert 27 <= result.after <= 30


async def test_nonsense_retry_after_is_capped_or_ignored(receiver, make_delivery):
    output = make_output(url=receiver.url)
    await output.open()
    try:
        receiver.reply(status=429, headers={"Retry-After": "99999999"})
        assert (await output.send([make_delivery()])).after == 3600
        receiver.reply(status=429, headers={"Retry-After": "soon"})
        assert (await output.send([make_delivery()])).after is None
    finally:
        await output.close()


async def test_400_fails_with_status_and_first_kib_of_body(receiver, make_delivery):
    body = "field 'src_ip' is required;" + "x" * 3000
    receiver.reply(status=400, body=body)
    result = await send_once(make_output(url=receiver.url), [make_delivery()])
    assert result == Failed("HTTP 400 Bad Request", status=400, response=body[:1024])


async def test_redirect_is_not_followed_by_default(receiver, make_delivery):
    receiver.reply(status=302, headers={"Location": "/elsewhere"})
    result = await send_once(make_output(url=receiver.url + "/old"), [make_delivery()])
    assert isinstance(result, Failed)
    assert result.status == 302
    assert "follow_redirects" in result.reason
    assert [r.path for r in receiver.requests] == ["/old"]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_followed_redirect_resends_the_same_request(receiver, make_delivery, status):
    receiver.queue(status, headers={"Location": "/new"})
    output = make_output(url=receiver.url + "/old", follow_redirects=True)
    delivery = make_delivery()
    assert await send_once(output, [delivery]) == Delivered()
    old, new = receiver.requests
    assert (new.method, new.path) == ("POST", "/new")
    assert new.raw_body == delivery.body_json()
    assert new.headers["webhook-id"] == delivery.id


async def test_see_other_after_post_counts_as_delivered(receiver, make_delivery):
    receiver.queue(303, headers={"Location": "/status/1"})
    output = make_output(url=receiver.url, follow_redirects=True)
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert len(receiver.requests) == 1


async def test_redirect_from_https_to_http_is_refused(tls_receiver, receiver, tls,
                                                     make_delivery):
    tls_receiver.reply(status=308, headers={"Location": receiver.url + "/plain"})
    output = make_output(url=tls_receiver.url, ca_file=tls.ca_file, follow_redirects=True)
    result = await send_once(output, [make_delivery()])
    assert isinstance(result, Failed)
    assert "https to http" in result.reason
    assert receiver.requests == []


async def test_redirect_to_another_host_drops_credentials(make_receiver, make_delivery):
    first, second = await make_receiver(), await make_receiver()
    first.reply(status=307, headers={"Location": second.url + "/there"})
    output = make_output(url=first.url, follow_redirects=True, username="soc", password="pw")
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert "Authorization" in first.requests[0].headers
    assert "Authorization" not in second.requests[0].headers


async def test_connection_refused_is_retried(closed_port, make_delivery):
    result = await send_once(make_output(url=f"http://127.0.0.1:{closed_port}/x"),
                             [make_delivery()])
    assert result == Retry(f"connection refused to 127.0.0.1:{closed_port}")


async def test_timeout_is_retried(receiver, make_delivery):
    receiver.reply(delay=5)
    result = await send_once(make_output(url=receiver.url, timeout=0.2), [make_delivery()])
    assert isinstance(result, Retry)
    assert result.reason.startswith("timed out after 0.2 s")


async def test_server_closing_the_connection_is_retried(receiver, make_delivery):
    async def hang_up(request, record):
        request.transport.close()
        return web.Response()  # never reaches the client
    receiver.handler = hang_up
    result = await send_once(make_output(url=receiver.url), [make_delivery()])
    assert isinstance(result, Retry)
    assert f"127.0.0.1:{receiver.port}" in result.reason


# --- TLS -------------------------------------------------------------------------------


async def test_tls_fails_without_the_ca(tls_receiver, make_delivery):
    result = await send_once(make_output(url=tls_receiver.url), [make_delivery()])
    assert isinstance(result, Failed)
    assert "certificate verify failed" in result.reason
    assert tls_receiver.requests == []


async def test_tls_works_with_ca_file(tls_receiver, tls, make_delivery):
    output = make_output(url=tls_receiver.url + "/secure", ca_file=tls.ca_file)
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert tls_receiver.requests[0].path == "/secure"


async def test_tls_host_name_is_checked(make_receiver, tls, make_delivery):
    # a certificate from the trusted CA, but for another name
    other = tls.ca.issue_cert("other.example")
    context = tls.server_context()
    other.configure_cert(context)
    receiver = await make_receiver(context)
    result = await send_once(make_output(url=receiver.url, ca_file=tls.ca_file),
                             [make_delivery()])
    assert isinstance(result, Failed)
    assert "certificate verify failed" in result.reason


async def test_skip_ssl_verification_works_and_warns_once(tls_receiver, make_delivery, caplog):
    output = make_output(url=tls_receiver.url, skip_ssl_verification=True)
    with caplog.at_level(logging.WARNING, logger="nwpipe"):
        await output.open()
        try:
            assert await output.send([make_delivery()]) == Delivered()
            assert await output.send([make_delivery()]) == Delivered()
        finally:
            await output.close()
    warnings = [r for r in caplog.records if r.name == "nwpipe" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "NOT verified" in warnings[0].getMessage()
    assert "outputs.soc" in warnings[0].getMessage()


async def test_mutual_tls(make_receiver, tls, make_delivery):
    receiver = await make_receiver(tls.server_context(require_client_cert=True))

    # separate certificate and key files
    output = make_output(url=receiver.url, ca_file=tls.ca_file,
                         client_cert=tls.client_cert_file, client_key=tls.client_key_file)
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert ("email", "client@nwpipe.test") in receiver.requests[0].client_cert["subjectAltName"]

    # one PEM holding both
    output = make_output(url=receiver.url, ca_file=tls.ca_file, client_cert=tls.client_pem_file)
    assert await send_once(output, [make_delivery()]) == Delivered()

    # without a client certificate the server refuses the connection
    output = make_output(url=receiver.url, ca_file=tls.ca_file)
    result = await send_once(output, [make_delivery()])
    assert isinstance(result, (Retry, Failed))
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("setting", ["ca_file", "client_cert", "client_key"])
def test_missing_tls_files_are_rejected_at_load(setting, tmp_path):
    message = load_error(url="https://127.0.0.1/x", **{setting: str(tmp_path / "nope.pem")})
    assert f"outputs.soc.{setting}" in message
    assert "not found" in message


def test_unloadable_tls_files_are_rejected_at_load(tmp_path, tls):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert "cannot load ca_file" in load_error(url="https://127.0.0.1/x", ca_file=str(junk))
    assert f"client_key: {junk} holds no PEM private key" in load_error(
        url="https://127.0.0.1/x", client_cert=tls.client_cert_file, client_key=str(junk))
    assert "client_cert is not" in load_error(
        url="https://127.0.0.1/x", client_key=tls.client_key_file)


# --- signing, batches, compression -----------------------------------------------------


async def test_signature_verifies_with_standardwebhooks(receiver, make_delivery):
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    delivery = make_delivery(body={"state": "start", "note": "ünïcode"})
    output = make_output(url=receiver.url, signing_secret=secret)
    assert await send_once(output, [delivery]) == Delivered()
    request = receiver.requests[0]
    assert request.headers["webhook-id"] == delivery.id
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(request.raw_body, dict(request.headers)) == delivery.body
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(request.raw_body, dict(request.headers))


async def test_signed_gzip_request_verifies_after_decompression(receiver, make_delivery):
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    output = make_output(url=receiver.url, signing_secret=secret, compression="gzip")
    assert await send_once(output, [make_delivery()]) == Delivered()
    request = receiver.requests[0]
    assert Webhook(secret).verify(request.body, dict(request.headers))


def test_bad_signing_secret_is_rejected_without_showing_it():
    message = load_error(url="http://127.0.0.1/x", signing_secret="whsec_###not-base64###")
    assert "outputs.soc.signing_secret" in message
    assert "not-base64" not in message


async def test_batch_as_json_array(receiver, make_delivery, make_event):
    batch = [make_delivery(event=make_event(updatecount=n)) for n in range(3)]
    output = make_output(url=receiver.url, batch_format="json_array")
    await output.open()
    try:
        assert await output.send(batch) == Delivered()
        assert await output.send(batch) == Delivered()  # a retry of the same batch
    finally:
        await output.close()
    first, again = receiver.requests
    assert first.json() == [d.body for d in batch]
    assert first.headers["Content-Type"] == "application/json"
    batch_id = first.headers["webhook-id"]
    assert batch_id.startswith("batch_")
    assert batch_id not in {d.id for d in batch}
    assert first.headers["Idempotency-Key"] == batch_id
    assert again.headers["webhook-id"] == batch_id  # stable across retries


async def test_batch_as_ndjson(receiver, make_delivery, make_event):
    batch = [make_delivery(event=make_event(updatecount=n)) for n in range(3)]
    output = make_output(url=receiver.url, batch_format="ndjson")
    await output.open()
    try:
        assert await output.send(batch) == Delivered()
        assert await output.send(batch[:1]) == Delivered()
    finally:
        await output.close()
    many, one = receiver.requests
    assert many.ndjson() == [d.body for d in batch]
    assert many.raw_body.endswith(b"\n")
    assert many.headers["Content-Type"] == "application/x-ndjson"
    # a single delivery is sent as its body alone, as Netography does
    assert one.json() == batch[0].body
    assert one.headers["Content-Type"] == "application/json"
    assert one.headers["webhook-id"] == batch[0].id


async def test_gzip_compression(receiver, make_delivery):
    delivery = make_delivery()
    output = make_output(url=receiver.url, compression="gzip")
    assert await send_once(output, [delivery]) == Delivered()
    request = receiver.requests[0]
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.raw_body[:2] == b"\x1f\x8b"
    assert gzip.decompress(request.raw_body) == delivery.body_json()


# --- secrets ---------------------------------------------------------------------------


SECRETS = {"password": "pw-Zq81x", "bearer_token": "tok-Zq81x",
           "signing_secret": "whsec_" + base64.b64encode(b"signing-Zq81x-key").decode()}


def _assert_no_secret(text: str | None):
    for secret in [*SECRETS.values(), base64.b64encode(b"soc:pw-Zq81x").decode(),
                   "key-Zq81x"]:
        assert secret not in (text or "")


@pytest.mark.parametrize("auth", [
    {"username": "soc", "password": SECRETS["password"]},
    {"bearer_token": SECRETS["bearer_token"]},
])
async def test_secrets_never_appear_in_describe_or_results(
        receiver, closed_port, make_delivery, auth):
    def output(url, **more):
        return make_output(url=url, signing_secret=SECRETS["signing_secret"],
                           headers="X-Netography: Webhook, X-Api-Key: key-Zq81x",
                           **auth, **more)

    description = output(receiver.url + "/hooks?token=abc").describe()
    _assert_no_secret(description)
    assert "abc" not in description
    assert "X-Api-Key" in description and "signed" in description

    async def echo_headers(request, record):
        return web.Response(status=401, text=repr(dict(request.headers)))
    receiver.handler = echo_headers
    results = [await send_once(output(receiver.url), [make_delivery()])]
    receiver.handler = None
    receiver.reply(status=503, body="busy")
    results.append(await send_once(output(receiver.url), [make_delivery()]))
    receiver.reply(delay=5)
    results.append(await send_once(output(receiver.url, timeout=0.1), [make_delivery()]))
    results.append(await send_once(output(f"http://127.0.0.1:{closed_port}"), [make_delivery()]))

    assert [type(r) for r in results] == [Failed, Retry, Retry, Retry]
    # the echo came back, redacted where it holds credentials only
    assert "Authorization" in results[0].response and "Webhook" in results[0].response
    for result in results:
        _assert_no_secret(result.reason)
        _assert_no_secret(result.response)


@pytest.mark.parametrize("table", [
    {"username": "soc", "password": "pw-Zq81x\r\n"},
    {"bearer_token": "tok-Zq81x\n"},
    {"username": "soc", "password": "pw-Zq81x", "bearer_token": "tok-Zq81x"},
    {"password": "pw-Zq81x"},
    {"username": "soc", "password": "pw-Zq81x", "headers": "Authorization: Basic xyz"},
])
def test_auth_config_errors_do_not_show_secrets(table):
    message = load_error(url="http://127.0.0.1/x", **table)
    _assert_no_secret(message)
    assert "Zq81x" not in message


# --- settings and registration ---------------------------------------------------------


def test_defaults():
    config = validate_settings({"url": "https://soc.example.com/x"}, WebhookOutput.settings,
                               key="outputs.soc")
    assert config["method"] == "POST"
    assert config["timeout"] == 10.0
    assert config["skip_ssl_verification"] is False
    assert config["follow_redirects"] is False
    assert config["trust_env"] is False
    assert WebhookOutput.concurrency == 16
    secret = {name for name, s in WebhookOutput.settings.items() if s.secret}
    assert secret == {"password", "bearer_token", "signing_secret"}


@pytest.mark.parametrize("table, problem", [
    ({"method": "GET"}, "POST or PUT"),
    ({"timeout": 0}, "more than 0"),
    ({"compression": "brotli"}, "gzip"),
    ({"batch_format": "csv"}, "json_array"),
    ({"proxy": "socks5://127.0.0.1:1080"}, "http://"),
    ({"username": "a:b"}, "':'"),
])
def test_other_settings_are_checked_at_load(table, problem):
    assert problem in load_error(url="http://127.0.0.1/x", **table)


def test_registered_as_webhook_through_the_hook():
    pm = pluggy.PluginManager("nwpipe")
    pm.add_hookspecs(nwpipe.hookspecs)
    pm.register(webhook)
    registered = {}
    pm.hook.register_outputs(register=lambda name, cls: registered.setdefault(name, cls))
    assert registered == {"webhook": WebhookOutput}
    assert issubclass(WebhookOutput, nwpipe.Output)


# --- proxies ---------------------------------------------------------------------------


async def test_explicit_proxy_is_used(make_receiver, make_delivery):
    proxy = await make_receiver()  # records the absolute-form request a proxy receives
    output = make_output(url="http://webhook.example/in", proxy=proxy.url)
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert proxy.requests[0].target == "http://webhook.example/in"


async def test_environment_proxy_only_with_trust_env(make_receiver, make_delivery, monkeypatch):
    proxy, target = await make_receiver(), await make_receiver()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert await send_once(make_output(url=target.url + "/in"), [make_delivery()]) == Delivered()
    assert (len(target.requests), len(proxy.requests)) == (1, 0)
    output = make_output(url="http://webhook.example/in", trust_env=True)
    assert await send_once(output, [make_delivery()]) == Delivered()
    assert proxy.requests[0].target == "http://webhook.example/in"


# --- secrets in the URL's query and in what the receiver sends back ------------------------

# follow_redirects = true sends requests through aiohttp, otherwise the lean client
BOTH_PATHS = pytest.mark.parametrize("path", [{}, {"follow_redirects": True}],
                                     ids=["direct", "aiohttp"])


@pytest.mark.parametrize("location", [
    "/next?token=QSECRET&x=1",
    "{base}/next?token=QSECRET",
    "{base}/next/QSECRET?a=b",
    "/next/%51SECRET?x=1",
])
async def test_redirect_location_in_reason_has_no_query_and_no_url_secret(
        receiver, make_delivery, location):
    receiver.reply(status=302, headers={"Location": location.format(base=receiver.url)})
    output = make_output(url=receiver.url + "/hook?token=QSECRET")
    result = await send_once(output, [make_delivery()])
    assert isinstance(result, Failed) and result.status == 302
    assert "QSECRET" not in result.reason and "%51SECRET" not in result.reason
    assert "/next" in result.reason and "?" not in result.reason.split("not followed")[0]
    assert "redirect to" in result.reason


async def test_unsupported_redirect_location_does_not_show_url_secret(receiver, make_delivery):
    receiver.reply(status=302, headers={"Location": "ftp://files.example/QSECRET?token=QSECRET"})
    output = make_output(url=receiver.url + "/hook?token=QSECRET", follow_redirects=True)
    result = await send_once(output, [make_delivery()])
    assert isinstance(result, Failed)
    assert "unsupported location" in result.reason
    assert "QSECRET" not in result.reason
    assert "ftp://files.example/***" in result.reason


@BOTH_PATHS
async def test_receiver_reason_phrase_echoing_the_url_token_is_redacted(
        receiver, make_delivery, path):
    async def echo_request_line(request, record):
        return web.Response(status=599, reason=f"bad {request.path_qs}",
                            text=f"you sent {request.path_qs}")
    receiver.handler = echo_request_line
    output = make_output(url=receiver.url + "/hook?token=QSECRET&v=2", **path)
    result = await send_once(output, [make_delivery()])
    assert isinstance(result, Retry) and result.status == 599
    assert result.reason.startswith("HTTP 599 bad /hook?")
    assert "QSECRET" not in result.reason
    assert "QSECRET" not in result.response


async def _raw_server(answer: bytes):
    """A bare TCP server on 127.0.0.1 answering every request with ``answer`` bytes."""
    import asyncio

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_receiver_text_cannot_forge_log_lines(make_delivery):
    forged = b"Oops\rnwpipe: delivered everything\x1b[2J\x85ok"
    location = b"/x\x1b[31mred\rforged"
    server = await _raw_server(
        b"HTTP/1.1 599 " + forged + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    redirect = await _raw_server(
        b"HTTP/1.1 302 Found\r\nLocation: " + location
        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    try:
        for srv in (server, redirect):
            port = srv.sockets[0].getsockname()[1]
            result = await send_once(make_output(url=f"http://127.0.0.1:{port}/x"),
                                     [make_delivery()])
            assert result.reason.isprintable(), result.reason
            assert "\r" not in result.reason and "\x1b" not in result.reason
    finally:
        for srv in (server, redirect):
            srv.close()
            await srv.wait_closed()


async def test_cross_origin_redirect_drops_every_credential_and_signature(
        make_receiver, make_delivery):
    first, second = await make_receiver(), await make_receiver()
    first.queue(307, headers={"Location": "/same"})
    first.queue(307, headers={"Location": second.url + "/there"})
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    output = make_output(url=first.url, follow_redirects=True, bearer_token="tok-1",
                         signing_secret=secret,
                         headers="X-Api-Key: k-1, X-Session-Id: s-1, X-Netography: Webhook")
    delivery = make_delivery()
    assert await send_once(output, [delivery]) == Delivered()
    credentials = ("Authorization", "X-Api-Key", "X-Session-Id",
                   "webhook-signature", "webhook-timestamp")
    for request in first.requests:  # the same origin: everything is kept
        for name in credentials:
            assert name in request.headers
    [moved] = second.requests
    for name in credentials:
        assert name not in moved.headers
    assert moved.headers["webhook-id"] == moved.headers["Idempotency-Key"] == delivery.id
    assert moved.headers["X-Netography"] == "Webhook"


@pytest.mark.parametrize("query, hidden, shown", [
    ("?token=ab&v=1", ["ab", "token=ab&v=1"], ["v=1"]),
    ("?code=QSECRET+x%2By", ["QSECRET x+y", "QSECRET+x%2By", "QSECRET%20x%2By"], []),
    ("?QSECRETonly", ["QSECRETonly"], []),
    ("?token=QSECRET&c={{ customer }}", ["QSECRET"], []),
])
async def test_url_query_values_are_redacted_from_receiver_answers(
        receiver, make_delivery, query, hidden, shown):
    echoed = " | ".join(hidden + shown)

    async def echo(request, record):
        return web.Response(status=400, text=echoed)
    receiver.handler = echo
    result = await send_once(make_output(url=receiver.url + "/hook" + query), [make_delivery()])
    assert isinstance(result, Failed)
    for text in hidden:
        assert text not in result.response
    for text in shown:  # short values under ordinary names stay readable
        assert text in result.response


def test_describe_hides_token_like_path_segments():
    from nwpipe.settings import validate_settings
    from nwpipe_plugins.webhook import WebhookOutput

    def shown(url):
        config = validate_settings({"url": url}, WebhookOutput.settings, key="outputs.o")
        return WebhookOutput("o", config).describe()

    # Slack puts the secret in the path
    assert shown("https://hooks.slack.com/services/T0123ABCD/B0123ABCD/AbCdEfGhIjKlMnOpQrStUvWx") \
        == "webhook POST https://hooks.slack.com/services/T0123ABCD/B0123ABCD/…"
    assert "00edee24" not in shown("https://x.example/hooks/00edee24-bc66-4b37-803c-123456789012")
    # names stay readable
    assert shown("https://soc.example.com/netography-webhooks/{{ customer }}") \
        == "webhook POST https://soc.example.com/netography-webhooks/{{ customer }}"
