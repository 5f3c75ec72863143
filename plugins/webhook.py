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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import gzip
import hashlib
import hmac
import logging
import re
import socket
import ssl
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import quote, unquote, unquote_plus

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from yarl import URL

from nwpipe import Delivered, Delivery, Failed, Output, Result, Retry, Setting, __version__, hookimpl
from nwpipe.net import http1
from nwpipe.settings import positive_seconds
from nwpipe.net.tls import check_tls_files, client_context, tls_settings
if TYPE_CHECKING:
    import aiohttp

from nwpipe.net.httputil import (
    check_header,
    has_line_break,
    header_value_problem,
    parse_header_list,
    parse_retry_after,
    printable,
    redact,
    snippet,
    status_reason,
)

log = logging.getLogger("nwpipe")

#: how much of a response body a Retry/Failed carries
RESPONSE_SNIPPET = 1024
#: how much of a 2xx body is read to keep the connection reusable; a longer body
#: just costs that connection
DRAIN_LIMIT = 64 * 1024
MAX_REDIRECTS = 5
#: headers this output sets itself; a user's value would break signing or framing
RESERVED_HEADERS = frozenset({
    "content-length", "content-encoding", "transfer-encoding", "host", "connection",
    "webhook-id", "webhook-timestamp", "webhook-signature", "idempotency-key",
})
RETRY_STATUSES = frozenset({408, 429})
_DELIVERED = Delivered()
#: a URL path segment that looks like a token rather than a name: 16 or more letters,
#: digits, "-" or "_", with a digit or with both upper and lower case
_TOKEN_LIKE = re.compile(r"(?=.*\d|(?=.*[a-z])(?=.*[A-Z]))[A-Za-z0-9_-]{16,}")
_TEMPLATE_MARKS = ("{{", "{%", "{#")
#: user headers whose values are treated as credentials (kept out of messages)
_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|pass|cookie|session|signature", re.I)
#: headers that stay on a redirect to another origin although their names look like
#: credentials: they identify the message, so the receiver can deduplicate it
_IDENTITY_HEADERS = frozenset({"webhook-id", "idempotency-key"})
#: headers that prove the request came from us: never sent to another origin
_SIGNATURE_HEADERS = frozenset({"webhook-signature", "webhook-timestamp"})
#: the shortest query value taken for a secret when its name does not say it is one:
#: shorter ones ("v=1") would blank out ordinary text in every message
_MIN_QUERY_SECRET = 4
#: how much of a Location a message shows
_LOCATION_SHOWN = 200
#: characters left alone when a rendered URL is escaped: the reserved ones and '%'
_URL_SAFE = "/?#[]@!$&'()*+,;=:%~"


def _is_template(text: str) -> bool:
    return any(mark in text for mark in _TEMPLATE_MARKS)


# aiohttp is imported only when an output needs it (a proxy, followed redirects): it
# takes longer to import than the rest of nwpipe together.

class _NotRaised(Exception):
    """Stands in for aiohttp's exception classes while aiohttp is not imported."""


class _AiohttpAbsent:
    def __getattr__(self, name: str) -> type[Exception]:
        return _NotRaised


def _aiohttp_errors():
    """The aiohttp module if it is imported, else a stand-in whose exception classes
    nothing is an instance of (no aiohttp error can happen before it is imported)."""
    return sys.modules.get("aiohttp") or _AiohttpAbsent()


# --- templates ------------------------------------------------------------------------

def _url_value(value: Any) -> str:
    """Percent-encode every ``{{ }}`` value of a URL template.

    Nothing in a value is left unescaped, ``/``, ``?``, ``&``, ``#`` and ``%``
    included, so event data can fill one path segment or one query value and never
    change the URL's shape.
    """
    return quote(value if isinstance(value, str) else str(value), safe="")


# Compiled once per process. The URL environment percent-encodes every expression's
# value (``finalize``); both are sandboxed and fail on undefined names rather than
# silently rendering "".
_URL_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined,
                                         finalize=_url_value, autoescape=False)
_HEADER_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined,
                                            autoescape=False)


def _compile(env: jinja2.Environment, source: str, what: str) -> jinja2.Template:
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"{what}: template error: {exc.message} (line {exc.lineno})") from None


def _render(template: jinja2.Template, delivery: Delivery) -> str:
    """Render with the original event's fields as names, and ``body`` (the mapped event)."""
    return template.render(delivery.event, body=delivery.body)


# --- settings checks (run when the config loads) --------------------------------------

def split_url(url: str) -> tuple[str, str]:
    """Split ``url`` into its origin (``"https://host:port"``) and the rest (``"/p?q"``).

    Raises ``ValueError`` unless the scheme is http or https, the host is present and
    the origin holds no template syntax: scheme, host and port never come from event
    data. Credentials in the URL are refused (use ``username``/``password``).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("url is empty")
    url = url.strip()
    scheme, sep, remainder = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        # show only the scheme: the rest may hold credentials or a token
        shown = f"{scheme[:20]}://..." if sep else "no scheme"
        raise ValueError(f"url must start with http:// or https:// (got {shown})")
    end = len(remainder)
    for stop in "/?#":
        found = remainder.find(stop)
        if found != -1:
            end = min(end, found)
    netloc, rest = remainder[:end], remainder[end:]
    if "{" in netloc or "}" in netloc or "%" in netloc:
        raise ValueError("url: templates are allowed in the path and query only; "
                         "the scheme, host and port must be written out")
    if "@" in netloc:
        raise ValueError("url must not contain credentials; use username and password "
                         "(or bearer_token) instead")
    origin = f"{scheme.lower()}://{netloc}"
    try:
        parsed = URL(origin)
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"url has an invalid host or port: {exc}") from None
    if not parsed.host:
        raise ValueError("url has no host")
    if not rest or rest[0] == "?":
        rest = "/" + rest
    if "#" in rest and not _is_template(rest):
        raise ValueError("url must not contain a fragment ('#...'): it is never sent")
    return origin, rest


def _check_url(url: str) -> str:
    origin, rest = split_url(url)
    if _is_template(rest):
        _compile(_URL_ENV, rest, "url")
    else:
        _check_path_segments(rest)
    return url


def _check_path_segments(rest: str) -> None:
    """Refuse ``.`` and ``..`` path segments: they would be resolved away by the client
    or the receiver and so reach another path than the one configured."""
    path = rest.split("?", 1)[0].split("#", 1)[0]
    for segment in path.split("/"):
        if segment and unquote(segment) in (".", ".."):
            raise ValueError(f"url path has a '{unquote(segment)}' segment")


def parse_headers(value: str | dict | None) -> list[tuple[str, str]]:
    """Normalise the ``headers`` setting (portal string or TOML table) to a list.

    Raises ``ValueError`` naming the header for a bad name, a name or value with a
    line break, a header this output sets itself, or a header given twice. Values are
    never quoted in messages.
    """
    if value is None or value == "":
        return []
    if isinstance(value, str):
        pairs = parse_header_list(value)
    elif isinstance(value, dict):
        pairs = []
        for name, item in value.items():
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise ValueError(f"header '{name}': value must be a string")
            pairs.append((str(name), str(item)))
    else:
        raise ValueError("headers must be a 'Name: value, ...' string or a table")
    seen = set()
    for name, item in pairs:
        check_header(name, item)
        lower = name.lower()
        if lower in RESERVED_HEADERS:
            raise ValueError(f"header '{name}' is set by the webhook output itself")
        if lower in seen:
            raise ValueError(f"header '{name}' is given twice")
        seen.add(lower)
        if _is_template(item):
            _compile(_HEADER_ENV, item, f"header '{name}'")
    return pairs


def _check_headers(value: str | dict) -> str | dict:
    parse_headers(value)
    return value


def _check_method(value: str) -> str:
    method = value.strip().upper()
    if method not in ("POST", "PUT"):
        raise ValueError(f"method must be POST or PUT, got {value!r}")
    return method




def _check_no_line_break(what: str):
    def check(value: str) -> str:
        if has_line_break(value):
            raise ValueError(f"{what} contains a line break")
        return value
    return check


def _check_header_value(what: str):
    """A check for a setting sent as a header value (no control characters)."""
    def check(value: str) -> str:
        problem = header_value_problem(value)
        if problem is not None:
            raise ValueError(f"{what} {problem}")
        return value
    return check


def _check_username(value: str) -> str:
    if ":" in value:
        # RFC 7617: the user-id of Basic Auth cannot contain a colon
        raise ValueError("username must not contain ':'")
    return _check_no_line_break("username")(value)


def _check_proxy(value: str) -> str:
    try:
        url = URL(value)
    except ValueError:
        raise ValueError("proxy is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("proxy must be an http:// or https:// URL with a host")
    return value


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional ``whsec_``."""
    raw = secret.strip()
    if raw.startswith("whsec_"):
        raw = raw[len("whsec_"):]
    raw += "=" * (-len(raw) % 4)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("signing_secret must be 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("signing_secret is empty")
    return key


def _check_signing_secret(value: str) -> str:
    signing_key(value)
    return value


def _check_compression(value: str) -> str:
    value = value.strip().lower()
    if value not in ("gzip", "none", ""):
        raise ValueError(f"compression must be \"gzip\" or \"none\", got {value!r}")
    return value



def batch_id(ids: Iterable[str]) -> str:
    """A stable id for a batch: the same member ids always give the same id."""
    return "batch_" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]


def _seconds(value: float) -> str:
    return f"{value:g} s"


# --- the output -------------------------------------------------------------------------

class WebhookOutput(Output):
    """POST (or PUT) mapped events to an HTTP(S) endpoint, one request per batch."""

    settings = {
        "url": Setting(str, required=True, check=_check_url,
                       help="http(s) URL; Jinja allowed in the path and query"),
        "method": Setting(str, default="POST", check=_check_method, help="POST or PUT"),
        "headers": Setting((str, dict), default=None, check=_check_headers,
                           help="'Name: value, ...' (the portal's form) or a table; "
                                "values may use Jinja"),
        "username": Setting(str, default=None, aliases=("authusername",),
                            check=_check_username, help="HTTP Basic Auth user"),
        "password": Setting(str, default=None, aliases=("authpassword",), secret=True,
                            check=_check_no_line_break("password"),
                            help="HTTP Basic Auth password"),
        "bearer_token": Setting(str, default=None, secret=True,
                                check=_check_header_value("bearer_token"),
                                help="sent as 'Authorization: Bearer <token>'"),
        **tls_settings("the receiver"),
        "content_type": Setting(str, default=None, check=_check_header_value("content_type"),
                                help="default application/json "
                                     "(application/x-ndjson for ndjson batches)"),
        "timeout": Setting(float, default=10.0, check=positive_seconds,
                           help="seconds for the whole request"),
        "proxy": Setting(str, default=None, check=_check_proxy, help="http proxy URL"),
        "trust_env": Setting(bool, default=False,
                             help="honour HTTP(S)_PROXY, NO_PROXY and .netrc"),
        "compression": Setting(str, default=None, check=_check_compression,
                               help="\"gzip\" to compress request bodies"),
        "follow_redirects": Setting(bool, default=False,
                                    help="follow 301/302/307/308 resending the same request"),
        "signing_secret": Setting(str, default=None, secret=True, check=_check_signing_secret,
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
        self._method = _check_method(config["method"])
        self._origin, rest = split_url(config["url"])
        self._url_template = _compile(_URL_ENV, rest, "url") if _is_template(rest) else None
        self._url = None if self._url_template else URL(self._origin + rest)
        self._timeout = float(config["timeout"])
        self._follow_redirects = bool(config["follow_redirects"])
        self._gzip = config["compression"] == "gzip"
        self._ndjson = config["batch_format"] == "ndjson"
        self._proxy = config["proxy"] or None
        self._key = signing_key(config["signing_secret"]) if config["signing_secret"] else None
        content_type = config["content_type"]
        self._content_type = content_type or "application/json"
        self._batch_content_type = content_type or (
            "application/x-ndjson" if self._ndjson else "application/json")

        # Everything that does not depend on the event is built once here, so a send
        # only copies a small dict and adds the per-request headers.
        static: dict[str, str] = {
            "User-Agent": f"nwpipe/{__version__}",
            "Content-Type": self._content_type,
        }
        secrets = [config["password"], config["bearer_token"], config["signing_secret"]]
        if config["username"] is not None:
            userpass = f"{config['username']}:{config['password'] or ''}"
            credentials = base64.b64encode(userpass.encode()).decode()
            static["Authorization"] = f"Basic {credentials}"
            secrets.append(credentials)
        elif config["bearer_token"]:
            static["Authorization"] = f"Bearer {config['bearer_token']}"
        if self._gzip:
            static["Content-Encoding"] = "gzip"
        #: a Content-Type among the user's headers always wins
        self._fixed_content_type = False
        self._header_templates: list[tuple[str, jinja2.Template]] = []
        self._header_names: list[str] = []
        for hname, value in parse_headers(config["headers"]):
            self._header_names.append(hname)
            if hname.lower() == "content-type":
                self._fixed_content_type = True
            if _is_template(value):
                self._header_templates.append(
                    (hname, _compile(_HEADER_ENV, value, f"header '{hname}'")))
            else:
                # a user's header may replace User-Agent or Content-Type
                for existing in [k for k in static if k.lower() == hname.lower()]:
                    del static[existing]
                static[hname] = value
                if _CREDENTIAL_HEADER.search(hname):
                    secrets.append(value)
        secrets.extend(_query_secrets(rest))
        self._static_headers = static
        # only used on failure paths, to keep credentials out of messages
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._session: aiohttp.ClientSession | None = None

        # A direct connection goes through the lean HTTP/1.1 client (nwpipe.net.http1);
        # proxies (explicit or from the environment) and followed redirects through
        # aiohttp. For the direct path the request head is pre-encoded: a send only
        # appends the per-request headers.
        self._direct = not (self._proxy or config["trust_env"] or self._follow_redirects)
        self._pool: http1.Pool | None = None
        origin = URL(self._origin)
        host = origin.raw_host or ""
        self._connect_host = host
        self._connect_port = origin.port
        host_header = f"[{host}]" if ":" in host else host
        if origin.explicit_port and origin.port != {"http": 80, "https": 443}[origin.scheme]:
            host_header += f":{origin.port}"
        self._host_line = f"Host: {host_header}\r\n".encode("ascii")
        self._prefix = self._prefix_batch = b""
        if self._url is not None:
            target = self._request_line(self._url)
            self._prefix = target + self._encode_headers(static)
            self._prefix_batch = target + self._encode_headers(self._batch_headers(static))

    def _request_line(self, url: URL) -> bytes:
        target = url.raw_path_qs or "/"
        return f"{self._method} {target} HTTP/1.1\r\n".encode("ascii") + self._host_line

    @staticmethod
    def _encode_headers(headers: dict[str, str]) -> bytes:
        # names and values were checked for CR, LF and NUL when the config loaded
        # (templated values when rendered); values are sent as UTF-8, as aiohttp does
        return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()

    def _batch_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` for a request carrying several events (their Content-Type)."""
        if self._fixed_content_type:
            return headers
        headers = headers.copy()
        headers["Content-Type"] = self._batch_content_type
        return headers

    # -- lifecycle --

    async def open(self) -> None:
        """Create the one HTTP session (keep-alive pool sized to the concurrency)."""
        if self._session is not None or self._pool is not None:
            return
        config = self.config
        needs_tls = self._origin.startswith("https:") or self._follow_redirects
        context = client_context(config) if needs_tls else None
        if config["skip_ssl_verification"] and self._origin.startswith("https:"):
            log.warning("outputs.%s: skip_ssl_verification is on: the TLS certificate of "
                        "%s is NOT verified", self.name, self._origin)
        if self._direct:
            self._pool = http1.Pool(
                self._connect_host, self._connect_port, ssl_context=context,
                server_hostname=self._connect_host if context is not None else None,
                limit=max(1, int(self.concurrency)), keep=RESPONSE_SNIPPET,
                drain_limit=DRAIN_LIMIT)
            return
        import aiohttp

        connector = aiohttp.TCPConnector(limit=max(1, int(self.concurrency)),
                                         ssl=context if context is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            # events for different customers share this session: never carry cookies
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=bool(config["trust_env"]),
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def probe(self, delivery: Delivery) -> ProbeResult:
        """``nwpipe check --probe``: see probe_webhook at the end of this module."""
        return await probe_webhook(self, delivery)

    def describe(self) -> str:
        """``webhook POST https://host/path (basic auth, headers X-A, ...)``, no secrets."""
        shown = self._origin + self._display_rest()
        details = []
        if self.config["username"] is not None:
            details.append("basic auth")
        elif self.config["bearer_token"]:
            details.append("bearer token")
        if self._header_names:
            details.append("headers " + ", ".join(self._header_names))
        if self._key:
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

    def _display_rest(self) -> str:
        # the query string may carry a token ("?code=..."): show only that there is one
        rest = self.config["url"].strip()[len(self._origin):] or "/"
        path, question, _ = rest.partition("?")
        # so may the path (Slack: /services/T…/B…/<token>): hide token-like segments
        path = "/".join("…" if _TOKEN_LIKE.fullmatch(part) else part
                        for part in path.split("/"))
        return path + ("?…" if question else "")

    # -- sending --

    async def send(self, batch: list[Delivery]) -> Result:
        """Send ``batch`` in one request (per distinct templated URL/headers)."""
        if not batch:
            return _DELIVERED
        if self._url_template is None and not self._header_templates:
            return await self._send(self._url, self._static_headers, batch)
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
            result = await self._send(url, headers, members, templated=True)
            if result is not _DELIVERED:
                return result
        return _DELIVERED

    def _render(self, delivery: Delivery) -> tuple[URL, dict[str, str]] | Failed:
        url = self._url
        if self._url_template is not None:
            try:
                rest = _render(self._url_template, delivery)
            except Exception as exc:  # a template failing on this event's data
                return Failed(f"url template: {type(exc).__name__}: {exc}")
            try:
                _check_path_segments(rest)
                # values are already escaped (finalize); escape only what the literal
                # text may hold (spaces, non-ASCII) and keep the rest exactly as is
                url = URL(self._origin + quote(rest, safe=_URL_SAFE), encoded=True)
            except ValueError as exc:
                return Failed(f"url template: {exc}")
        headers = self._static_headers
        if self._header_templates:
            headers = headers.copy()
            for name, template in self._header_templates:
                try:
                    value = _render(template, delivery)
                except Exception as exc:
                    return Failed(f"header '{name}' template: {type(exc).__name__}: {exc}")
                problem = header_value_problem(value)
                if problem is not None:
                    return Failed(f"header '{name}': rendered value {problem}")
                for existing in [k for k in headers if k.lower() == name.lower()]:
                    del headers[existing]
                headers[name] = value
        return url, headers

    async def _send(self, url: URL, static: dict[str, str], batch: list[Delivery],
                    templated: bool = False) -> Result:
        if len(batch) == 1:
            delivery = batch[0]
            body = delivery.body_json()
            message_id = delivery.id
            single = True
        else:
            message_id = batch_id([d.id for d in batch])
            if self._ndjson:
                body = b"\n".join([d.body_json() for d in batch]) + b"\n"
            else:
                body = b"[" + b",".join([d.body_json() for d in batch]) + b"]"
            single = False
        signature = None
        if self._key is not None:
            # Standard Webhooks: HMAC-SHA256 over "id.timestamp.body" (the body before
            # any Content-Encoding, as the receiver's framework hands it over)
            timestamp = str(int(time.time()))
            digest = hmac.new(self._key, f"{message_id}.{timestamp}.".encode() + body,
                              hashlib.sha256).digest()
            signature = (timestamp, "v1," + base64.b64encode(digest).decode())
        if self._gzip:
            body = gzip.compress(body, compresslevel=6, mtime=0)

        if self._direct:
            if templated:
                prefix = self._request_line(url) + self._encode_headers(
                    static if single else self._batch_headers(static))
            else:
                prefix = self._prefix if single else self._prefix_batch
            mid = message_id.encode()
            head = prefix + b"webhook-id: " + mid + b"\r\nIdempotency-Key: " + mid + b"\r\n"
            if signature is not None:
                head += ("webhook-timestamp: %s\r\nwebhook-signature: %s\r\n"
                         % signature).encode()
            head += b"Content-Length: %d\r\n\r\n" % len(body)
            return await self._request_direct(url, head, body)

        headers = static.copy() if single else self._batch_headers(static)
        headers["webhook-id"] = message_id
        headers["Idempotency-Key"] = message_id
        if signature is not None:
            headers["webhook-timestamp"], headers["webhook-signature"] = signature
        return await self._request(url, headers, body)

    async def _request_direct(self, url: URL, head: bytes, body: bytes) -> Result:
        pool = self._pool
        if pool is None:
            raise RuntimeError("WebhookOutput.send() called before open()")
        try:
            response = await pool.request(head, body, self._timeout)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a result
            self.last_error = exc
            return self._exception_result(exc, url)
        self.last_status = status = response.status
        if 200 <= status < 300:
            return _DELIVERED
        headers = response.headers
        return self._classify(status, response.reason, headers.get("retry-after"),
                              headers.get("location"), response.body)

    async def _request(self, url: URL, headers: dict[str, str], body: bytes) -> Result:
        session = self._session
        if session is None:
            raise RuntimeError("WebhookOutput.send() called before open()")
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                async with session.request(self._method, url, data=body, headers=headers,
                                           proxy=self._proxy, allow_redirects=False) as resp:
                    self.last_status = status = resp.status
                    if 200 <= status < 300:
                        await _drain(resp)
                        return _DELIVERED
                    if 300 <= status < 400 and self._follow_redirects:
                        if status == 303:
                            # "See Other" answers a POST that was processed
                            await _drain(resp)
                            return _DELIVERED
                        if status in (301, 302, 307, 308):
                            target = self._redirect_target(url, resp.headers.get("Location"))
                            if isinstance(target, Failed):
                                return target
                            await _drain(resp)
                            if target.origin() != url.origin():
                                headers = _cross_origin_headers(headers)
                            url = target
                            continue
                    return await self._classify_response(resp)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a result
                self.last_error = exc
                return self._exception_result(exc, url)
        return Failed(f"too many redirects (more than {MAX_REDIRECTS})")

    async def _classify_response(self, resp: aiohttp.ClientResponse) -> Result:
        import aiohttp

        try:
            data = await _read_some(resp, RESPONSE_SNIPPET)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            data = b""
        return self._classify(resp.status, resp.reason, resp.headers.get("Retry-After"),
                              resp.headers.get("Location"), data)

    def _classify(self, status: int, reason: str | None, retry_after: str | None,
                  location: str | None, data: bytes) -> Result:
        """The result of a non-2xx answer (redirects here are not followed)."""
        text = redact(snippet(data, RESPONSE_SNIPPET), self._secrets)
        # a non-standard status brings the receiver's phrase, which may echo the
        # request line and so a token in the URL's query
        reason = redact(status_reason(status, reason), self._secrets)
        if status in RETRY_STATUSES or 500 <= status < 600:
            return Retry(reason, after=parse_retry_after(retry_after), status=status,
                         response=text)
        if 300 <= status < 400:
            where = f" to {self._show_location(location)}" if location else ""
            hint = "" if self._follow_redirects else " (set follow_redirects = true to follow)"
            return Failed(f"{reason}: redirect{where} not followed{hint}",
                          status=status, response=text)
        return Failed(reason, status=status, response=text)

    def _show_location(self, location: str) -> str:
        """A Location for a message: origin and path only (a query may carry a token),
        decoded, without control characters, redacted."""
        cut = location.split("?", 1)[0].split("#", 1)[0]
        try:
            parsed = URL(cut)
            shown = (str(parsed.origin()) if parsed.absolute else "") + parsed.path
        except ValueError:
            shown = unquote(cut)
        # redact before cutting: a cut could leave part of a secret unmatched
        return redact(printable(shown), self._secrets)[:_LOCATION_SHOWN]

    def _redirect_target(self, url: URL, location: str | None) -> URL | Failed:
        """Where a followed redirect goes, or why it is not followed."""
        if not location:
            return Failed("redirect without a Location header")
        try:
            target = url.join(URL(location))
        except ValueError:
            return Failed("redirect to an invalid Location")
        if target.scheme not in ("http", "https") or not target.host:
            return Failed("redirect to an unsupported location "
                          f"'{self._show_location(location)}'")
        if url.scheme == "https" and target.scheme == "http":
            return Failed("refusing a redirect from https to http "
                          f"({printable(target.host)})")
        return target

    def _exception_result(self, exc: BaseException, url: URL) -> Result:
        """Turn a client exception into Retry (the network) or Failed (the config)."""
        aiohttp = _aiohttp_errors()
        where = f"{url.host}:{url.port}"
        if isinstance(exc, (aiohttp.ClientConnectorCertificateError,
                            ssl.SSLCertVerificationError)):
            cert_error = getattr(exc, "certificate_error", exc)
            detail = getattr(cert_error, "verify_message", None) or str(cert_error)
            return Failed(f"TLS certificate verify failed for {where}: {detail} "
                          "(set ca_file to the receiver's CA bundle)")
        if isinstance(exc, asyncio.TimeoutError):
            return Retry(f"timed out after {_seconds(self._timeout)} ({where})")
        ssl_error = _ssl_error(exc)
        if ssl_error is not None and not isinstance(
                ssl_error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
            # a TLS alert or handshake failure: a certificate or protocol setup problem
            # that a retry will not fix
            detail = getattr(ssl_error, "reason", None) or ssl_error.strerror or str(ssl_error)
            if detail == "WRONG_VERSION_NUMBER":
                detail += " (does the receiver speak plain http?)"
            return Failed(f"TLS error with {where}: {detail}")
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return Retry(f"cannot connect to proxy {exc.host}:{exc.port}: "
                         f"{_os_reason(exc.os_error)}")
        if isinstance(exc, http1.ServerDisconnected):
            return Retry(f"{where} {exc}")
        if isinstance(exc, http1.ProtocolError):
            # the message may quote what the receiver sent
            return Retry(redact(printable(f"bad HTTP response from {where}: {exc}"),
                                self._secrets))
        if isinstance(exc, (aiohttp.ClientConnectorError, http1.ConnectError)):
            os_error = exc.os_error
            if isinstance(os_error, socket.gaierror):
                return Retry(f"cannot resolve host {url.host!r}: {_os_reason(os_error)}")
            if os_error.errno == errno.ECONNREFUSED or isinstance(os_error, ConnectionRefusedError):
                return Retry(f"connection refused to {where}")
            return Retry(f"cannot connect to {where}: {_os_reason(os_error)}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return Retry(f"{where} closed the connection without a response")
        if isinstance(exc, (ConnectionResetError, aiohttp.ClientConnectionResetError)) or (
                isinstance(exc, OSError) and exc.errno == errno.ECONNRESET):
            return Retry(f"connection reset by {where}")
        if isinstance(exc, aiohttp.ClientResponseError):
            # str() of this error includes the full URL, which may hold a token
            return Retry(f"bad HTTP response from {where}: {exc.message}")
        if isinstance(exc, aiohttp.InvalidURL):
            return Failed(f"invalid URL for {where}")
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return Retry(redact(f"{type(exc).__name__} talking to {where}: {exc}", self._secrets))
        return Failed(redact(f"{type(exc).__name__}: {exc}", self._secrets))


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError behind ``exc`` (aiohttp wraps them), if any."""
    aiohttp = _aiohttp_errors()
    seen = 0
    while exc is not None and seen < 5:
        # aiohttp's ClientConnectorSSLError is an SSLError too, but without the
        # details: look at the error it wraps first
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ssl.SSLError):
            return exc.os_error
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, aiohttp.ClientError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _query_secrets(rest: str) -> list[str]:
    """The parts of a configured URL's query that may be credentials (``?token=...``).

    The whole query, and each value as written and decoded: a receiver may echo any
    of them (in a reason phrase, a Location, a body). A short value counts only under
    a name that says it is a credential. Templated values are rendered per event and
    are left out.
    """
    query = rest.partition("?")[2].split("#", 1)[0]
    secrets = []
    for item in query.split("&"):
        name, _, raw = item.partition("=")
        if not raw or _is_template(raw):
            continue
        value = unquote_plus(raw)
        if len(value) >= _MIN_QUERY_SECRET or _CREDENTIAL_HEADER.search(unquote_plus(name)):
            secrets.extend((raw, value, quote(value, safe="")))
    if secrets or len(query) >= _MIN_QUERY_SECRET:
        secrets.extend((query, unquote(query)))
    return [s for s in secrets if s and not _is_template(s)]


def _cross_origin_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` for a redirect to another origin: credentials (by name, as in
    messages) and the signature are for the configured receiver only."""
    kept = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _SIGNATURE_HEADERS or (
                _CREDENTIAL_HEADER.search(name) and lower not in _IDENTITY_HEADERS):
            continue
        kept[name] = value
    return kept


async def _read_some(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body (less when it ends sooner)."""
    chunks = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read a (short) response to its end so the connection goes back to the pool."""
    import aiohttp

    try:
        await _read_some(resp, DRAIN_LIMIT)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        # the status already said how it went; a broken body only costs the connection
        pass


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
    answer = (getattr(result, "response", None) or "").strip().replace("\n", " ")
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
