"""The webhook output: send each mapped event to an HTTP(S) URL, as Netography does.

::

    [outputs.soc]
    type = "webhook"
    url = "https://soc.example.com/netography/{{ customer }}"
    headers = "X-Netography: Webhook, X-Team: soc"     # or a table
    username = "soc"
    password = "${SOC_PASSWORD}"

The Netography portal's names (``authusername``, ``authpassword``,
``skipsslverification``) are accepted too, so a portal integration copies across.

This output sends a batch once and reports how it went; retries, backoff, ordering
and the dead-letter file belong to the delivery engine. 2xx is ``Delivered``; 408, 429,
5xx, connection errors and timeouts are ``Retry`` (``after`` from ``Retry-After``);
other 4xx, 3xx not followed and certificate errors are ``Failed``.

Every request carries ``webhook-id`` and ``Idempotency-Key`` (the delivery id, the same
across retries and replays) and, with ``signing_secret``, the Standard Webhooks
``webhook-timestamp`` and ``webhook-signature`` headers.

Direct connections go through :mod:`nwpipe.net.http1`, a lean keep-alive HTTP/1.1 client
(per request it costs a fraction of a general client); a ``proxy``, ``trust_env`` or
``follow_redirects`` sends requests through an aiohttp session instead. Both paths send
the same requests and map outcomes to the same results.

This module is the output and its settings; its parts live in :mod:`nwpipe.webhook`
(settings checks, templates, request building, transports, result classification).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from yarl import URL

from nwpipe import Delivered, Delivery, Failed, Output, Result, Setting, __version__, hookimpl
from nwpipe.net.httputil import header_value_problem, printable
from nwpipe.net.signature import check_signing_secret
from nwpipe.net.tls import check_tls_files, client_context, tls_settings
from nwpipe.settings import positive_seconds, substituted_parts
from nwpipe.webhook.checks import (
    check_compression,
    check_header_value,
    check_headers,
    check_method,
    check_no_line_break,
    check_path_segments,
    check_proxy,
    check_url,
    check_username,
    parse_headers,
    split_url,
)
from nwpipe.webhook.classify import Classifier
from nwpipe.webhook.redaction import (
    Redactor,
    display_path,
    path_secrets,
    query_secrets,
    substituted_secrets,
    substituted_spans,
)
from nwpipe.webhook.request import RequestBuilder, shared_headers
from nwpipe.webhook.templates import compile_template, is_template, render
from nwpipe.webhook.transport import DirectTransport, Transport

log = logging.getLogger("nwpipe")

_DELIVERED = Delivered()
#: characters left alone when a rendered URL is escaped: the reserved ones and '%'
_URL_SAFE = "/?#[]@!$&'()*+,;=:%~"


class WebhookOutput(Output):
    """POST (or PUT) mapped events to an HTTP(S) endpoint, one request per batch."""

    settings = {
        "url": Setting(str, required=True, check=check_url,
                       help="http(s) URL; Jinja allowed in the path and query"),
        "method": Setting(str, default="POST", check=check_method, help="POST or PUT"),
        "headers": Setting((str, dict), default=None, check=check_headers,
                           help="'Name: value, ...' (the portal's form) or a table; "
                                "values may use Jinja"),
        "username": Setting(str, default=None, aliases=("authusername",),
                            check=check_username, help="HTTP Basic Auth user"),
        "password": Setting(str, default=None, aliases=("authpassword",), secret=True,
                            check=check_no_line_break("password"),
                            help="HTTP Basic Auth password"),
        "bearer_token": Setting(str, default=None, secret=True,
                                check=check_header_value("bearer_token"),
                                help="sent as 'Authorization: Bearer <token>'"),
        **tls_settings("the receiver"),
        "content_type": Setting(str, default=None, check=check_header_value("content_type"),
                                help="default application/json "
                                     "(application/x-ndjson for ndjson batches)"),
        "timeout": Setting(float, default=10.0, check=positive_seconds,
                           help="seconds for the whole request"),
        "proxy": Setting(str, default=None, check=check_proxy, help="http proxy URL"),
        "trust_env": Setting(bool, default=False,
                             help="honour HTTP(S)_PROXY, NO_PROXY and .netrc"),
        "compression": Setting(str, default=None, check=check_compression,
                               help="\"gzip\" to compress request bodies"),
        "follow_redirects": Setting(bool, default=False,
                                    help="follow 301/302/307/308 resending the same request"),
        "signing_secret": Setting(str, default=None, secret=True, check=check_signing_secret,
                                  help="'whsec_...': sign requests per Standard Webhooks"),
        "batch_format": Setting(str, default="json_array", choices=("json_array", "ndjson"),
                                help="body of a batch of several events"),
    }
    concurrency = 16

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Cross-setting checks: one kind of auth, a key needs a certificate, and the
        TLS files must load."""
        basic = config.get("username") is not None or config.get("password") is not None
        if basic and config.get("bearer_token"):
            raise ValueError("set either username/password or bearer_token, not both")
        if config.get("password") is not None and config.get("username") is None:
            raise ValueError("password is set but username is not")
        if basic or config.get("bearer_token"):
            for name, _ in parse_headers(config.get("headers")):
                if name.lower() == "authorization":
                    raise ValueError("header 'Authorization' conflicts with "
                                     "username/password or bearer_token; keep one")
        check_tls_files(config)

    def __init__(self, name: str, config: dict[str, Any]):
        config = {**{key: s.default for key, s in self.settings.items()}, **config}
        super().__init__(name, config)
        #: the HTTP status of the last answer and the last client error, for `check --probe`
        self.last_status: int | None = None
        self.last_error: BaseException | None = None
        self._method = check_method(config["method"])
        self._origin, rest = split_url(config["url"])
        self._url_template = compile_template("url", rest, "url") if is_template(rest) else None
        self._url = None if self._url_template else URL(self._origin + rest)
        self._timeout = float(config["timeout"])
        self._follow_redirects = bool(config["follow_redirects"])
        self._gzip = config["compression"] == "gzip"
        self._proxy = config["proxy"] or None
        self._builder = RequestBuilder(config)
        # Everything that does not depend on the event is worked out once here, so a
        # send only adds the per-request headers.
        self._headers = shared_headers(config, f"nwpipe/{__version__}")
        # only used on failure paths, to keep credentials and URL tokens out of messages
        #: where the path and query hold text from ${VAR}: never shown, however short
        self._hidden = substituted_spans(config["url"], self._origin)
        self._classifier = Classifier(
            Redactor(self._headers.secrets + query_secrets(rest) + path_secrets(rest)
                     + substituted_secrets(rest, self._hidden)
                     + substituted_parts(config["headers"])),
            timeout=self._timeout, follow_redirects=self._follow_redirects)
        # A direct connection goes through the lean HTTP/1.1 client (nwpipe.net.http1);
        # proxies (explicit or from the environment) and followed redirects through
        # aiohttp.
        self._direct = not (self._proxy or config["trust_env"] or self._follow_redirects)
        self._transport: Transport | None = None
        #: with a fixed URL and headers: the URL and what every request shares, for
        #: one event and for a batch (prepared once, when the transport opens)
        self._prepared: tuple[URL, Any, Any] | None = None

    # -- lifecycle --

    async def open(self) -> None:
        """Create the transport (keep-alive pool sized to the concurrency)."""
        if self._transport is not None:
            return
        config = self.config
        needs_tls = self._origin.startswith("https:") or self._follow_redirects
        context = client_context(config) if needs_tls else None
        if config["skip_ssl_verification"] and self._origin.startswith("https:"):
            log.warning("outputs.%s: skip_ssl_verification is on: the TLS certificate of "
                        "%s is NOT verified", self.name, self._origin)
        limit = max(1, int(self.concurrency))
        transport: Transport
        if self._direct:
            transport = DirectTransport(self._origin, self._method, ssl_context=context,
                                        limit=limit, timeout=self._timeout)
        else:
            from nwpipe.webhook.aiohttp_transport import AiohttpTransport

            transport = AiohttpTransport(
                self._method, ssl_context=context, limit=limit, timeout=self._timeout,
                proxy=self._proxy, trust_env=bool(config["trust_env"]),
                follow_redirects=self._follow_redirects)
        await transport.open()
        self._transport = transport
        if self._url is not None and not self._headers.templates:
            # the shared part of every request, for one event and for a batch
            self._prepared = (self._url, transport.prepare(self._url, self._headers.single),
                              transport.prepare(self._url, self._headers.batch))

    async def close(self) -> None:
        """Close the transport and its connections."""
        if self._transport is not None:
            transport, self._transport = self._transport, None
            self._prepared = None
            await transport.close()

    async def probe(self, delivery: Delivery) -> ProbeResult:
        """``nwpipe check --probe``: see probe_webhook at the end of this module."""
        return await probe_webhook(self, delivery)

    def describe(self) -> str:
        """``webhook POST https://host/path (basic auth, headers X-A, ...)``, no secrets."""
        # the query may carry a token ("?code=..."), so may the path (Slack)
        rest = self.config["url"].strip()[len(self._origin):] or "/"
        shown = self._origin + display_path(rest, self._hidden)
        details = []
        if self.config["username"] is not None:
            details.append("basic auth")
        elif self.config["bearer_token"]:
            details.append("bearer token")
        if self._headers.names:
            details.append("headers " + ", ".join(self._headers.names))
        if self.config["signing_secret"]:
            details.append("signed")
        if self._gzip:
            details.append("gzip")
        if self.config["skip_ssl_verification"]:
            details.append("TLS NOT VERIFIED")
        elif self.config["ca_file"]:
            details.append(f"ca_file {self.config['ca_file']}")
        if self.config["client_cert"]:
            details.append("client certificate")
        if self._proxy:
            proxy = URL(self._proxy)
            details.append(f"proxy {proxy.host}:{proxy.port}")
        if self._follow_redirects:
            details.append("follows redirects")
        suffix = f" ({'; '.join(details)})" if details else ""
        return f"webhook {self._method} {shown}{suffix}"

    # -- sending --

    async def send(self, batch: list[Delivery]) -> Result:
        """Send ``batch`` in one request (per distinct templated URL/headers)."""
        if not batch:
            return _DELIVERED
        prepared = self._prepared
        if prepared is not None:
            return await self._send(prepared[0], prepared[1] if len(batch) == 1 else prepared[2],
                                    batch)
        transport = self._transport
        if transport is None:
            raise RuntimeError("WebhookOutput.send() called before open()")
        # Templated URL or headers: members of a batch may go to different places, so
        # group them (order kept) and send each group; ids stay stable per group, so a
        # retry of the whole batch is deduplicated by the receiver.
        groups: dict[tuple, tuple[URL, dict[str, str], list[Delivery]]] = {}
        for delivery in batch:
            rendered = self._render(delivery)
            if isinstance(rendered, Failed):
                return rendered
            url, headers = rendered
            key = (str(url), tuple(headers.items()))
            if key in groups:
                groups[key][2].append(delivery)
            else:
                groups[key] = (url, headers, [delivery])
        for url, headers, members in groups.values():
            if len(members) > 1:
                headers = self._headers.for_batch(headers)
            result = await self._send(url, transport.prepare(url, headers), members)
            if result is not _DELIVERED:
                return result
        return _DELIVERED

    def _render(self, delivery: Delivery) -> tuple[URL, dict[str, str]] | Failed:
        """The URL and headers of ``delivery`` (templates rendered), or why not."""
        url = self._url
        if self._url_template is not None:
            try:
                rest = render(self._url_template, delivery)
            except Exception as exc:  # a template failing on this event's data
                return Failed(f"url template: {type(exc).__name__}: {exc}")
            try:
                check_path_segments(rest)
                # values are already escaped (finalize); escape only what the literal
                # text may hold (spaces, non-ASCII) and keep the rest exactly as is
                url = URL(self._origin + quote(rest, safe=_URL_SAFE), encoded=True)
            except ValueError as exc:
                return Failed(f"url template: {exc}")
        headers = self._headers.single
        if self._headers.templates:
            headers = headers.copy()
            for name, template in self._headers.templates:
                try:
                    value = render(template, delivery)
                except Exception as exc:
                    return Failed(f"header '{name}' template: {type(exc).__name__}: {exc}")
                problem = header_value_problem(value)
                if problem is not None:
                    return Failed(f"header '{name}': rendered value {problem}")
                for existing in [k for k in headers if k.lower() == name.lower()]:
                    del headers[existing]
                headers[name] = value
        assert url is not None
        return url, headers

    async def _send(self, url: URL, prepared: Any, batch: list[Delivery]) -> Result:
        extra, body = self._builder.build(batch)
        try:
            answer = await self._transport.send(prepared, extra, body)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - every failure becomes a result
            self.last_error = exc
            return self._classifier.error(exc, url)
        self.last_status = status = answer.status
        if 200 <= status < 300 or (status == 303 and self._follow_redirects):
            # 303 "See Other" answers a POST that was processed
            return _DELIVERED
        return self._classifier.answer(answer)


@hookimpl
def register_outputs(register):
    """Register the ``webhook`` output type."""
    register("webhook", WebhookOutput)


# -- `nwpipe check --probe` ----------------------------------------------------------------
# WebhookOutput.probe calls this: one test delivery, then the answer in plain words.

from urllib.parse import urlsplit  # noqa: E402 - the probe block keeps its imports

from nwpipe.outputs import ProbeResult  # noqa: E402
from nwpipe.probing import explain_exception, explain_reason, ms, send_once  # noqa: E402


async def probe_webhook(output: WebhookOutput, delivery: Delivery) -> ProbeResult:
    """Send the test delivery once and explain the outcome (see nwpipe.probing)."""
    result, raised, elapsed = await send_once(output, delivery)
    status = output.last_status
    if isinstance(result, Delivered):
        shown = f"HTTP {status}" if status is not None else "sent"
        return ProbeResult(True, f"OK ({shown} in {ms(elapsed)})", status, elapsed)
    status = status if status is not None else getattr(result, "status", None)
    error = raised or output.last_error
    message = None
    if error is not None and status is None:
        url = urlsplit(str(output.config["url"]))
        port = url.port or {"https": 443, "http": 80}.get(url.scheme)
        message = explain_exception(error, url.hostname, port, output.config.get("timeout"))
    if message is None and status is not None:
        message = _probe_status(status, result, output.config)
    if message is None:
        message = explain_reason(result.reason, urlsplit(str(output.config["url"])).hostname)
    return ProbeResult(False, message, status, elapsed)


def _probe_status(status: int, result: Result, config: dict) -> str:
    """An HTTP answer other than 2xx, with what to check."""
    reason = getattr(result, "reason", "") or ""
    # the receiver's words on one line, without control characters (a CR or an escape
    # sequence could overwrite the verdict); the classifier has hidden the secrets
    answer = printable(" ".join((getattr(result, "response", None) or "").split()))
    said = f" (the receiver said: {answer[:200]})" if answer else ""
    head = reason.split(":")[0] if reason.startswith("HTTP ") else f"HTTP {status}"
    auth = ("basic" if config.get("username") is not None
            else "bearer" if config.get("bearer_token") else None)
    advice = {
        404: "check the path in url",
        405: "check method (POST or PUT) and the path in url",
        407: "the proxy wants credentials",
        413: "the receiver finds the body too large",
        429: "reachable, but rate-limited right now",
    }
    if status == 401:
        if auth == "basic":
            return f"{head}: check username/password"
        if auth == "bearer":
            return f"{head}: check bearer_token"
        return (f"{head}: the receiver wants credentials — set username and password "
                "(or bearer_token)")
    if status == 403:
        if auth:
            return (f"{head}: the credentials were refused for this URL — check them and "
                    "what they are allowed to do")
        return f"{head}: the receiver refuses this request (credentials or an IP allow-list?)"
    if status in advice:
        return f"{head}: {advice[status]}"
    if status in (400, 415, 422):
        return (f"{head}: the receiver rejected the test event's body — check the "
                f"mapping and content_type{said}")
    if 500 <= status < 600:
        return f"{head}: reachable, but the receiver failed{said}"
    if 300 <= status < 400:
        return reason or f"{head}: redirected"
    return f"{reason or head}{said}"
