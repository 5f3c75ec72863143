"""One webhook request from a batch: the headers every request shares, and per batch
the body, the delivery id, the Standard Webhooks signature and gzip."""

from __future__ import annotations

import base64
import gzip
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import jinja2

from nwpipe.net.signature import sign, signing_key
from nwpipe.outputs import Delivery
from nwpipe.webhook.checks import parse_headers
from nwpipe.webhook.redaction import CREDENTIAL_HEADER
from nwpipe.webhook.templates import compile_template, is_template

#: per-request headers: (name, value) pairs added after the shared ones
Extra = list[tuple[str, str]]


def batch_id(seeds: Iterable[str]) -> str:
    """A stable id for a batch: the same members always give the same id.

    It hashes the members' :attr:`~nwpipe.outputs.Delivery.seed` (what each delivery id
    is made from), so that a batch needs no hash per member.
    """
    return "batch_" + hashlib.sha256(
        "\n".join(seeds).encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class SharedHeaders:
    """The headers every request of one output carries, worked out once.

    ``single`` is for one event, ``batch`` for several (their Content-Type may
    differ); ``templates`` are the user's templated headers, rendered per event;
    ``names`` the user's header names (for ``describe``); ``secrets`` the values that
    are credentials (for redaction).
    """

    single: dict[str, str]
    batch: dict[str, str]
    templates: list[tuple[str, jinja2.Template]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    fixed_content_type: bool = False
    batch_content_type: str = "application/json"

    def for_batch(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` (shared or rendered) for a request carrying several events."""
        if self.fixed_content_type:
            return headers
        headers = headers.copy()
        headers["Content-Type"] = self.batch_content_type
        return headers


def shared_headers(config: dict[str, Any], user_agent: str) -> SharedHeaders:
    """The :class:`SharedHeaders` of a (validated) webhook config."""
    gzipped = config["compression"] == "gzip"
    ndjson = config["batch_format"] == "ndjson"
    content_type = config["content_type"]
    static: dict[str, str] = {
        "User-Agent": user_agent,
        "Content-Type": content_type or "application/json",
    }
    secrets = [config["password"], config["bearer_token"], config["signing_secret"]]
    if config["username"] is not None:
        userpass = f"{config['username']}:{config['password'] or ''}"
        credentials = base64.b64encode(userpass.encode()).decode()
        static["Authorization"] = f"Basic {credentials}"
        secrets.append(credentials)
    elif config["bearer_token"]:
        static["Authorization"] = f"Bearer {config['bearer_token']}"
    if gzipped:
        static["Content-Encoding"] = "gzip"
    fixed_content_type = False
    templates: list[tuple[str, jinja2.Template]] = []
    names: list[str] = []
    for name, value in parse_headers(config["headers"]):
        names.append(name)
        if name.lower() == "content-type":
            fixed_content_type = True  # a Content-Type among the user's headers always wins
        if is_template(value):
            templates.append((name, compile_template("header", value, f"header '{name}'")))
        else:
            # a user's header may replace User-Agent or Content-Type
            for existing in [k for k in static if k.lower() == name.lower()]:
                del static[existing]
            static[name] = value
            if CREDENTIAL_HEADER.search(name):
                secrets.append(value)
    shared = SharedHeaders(
        single=static, batch=static, templates=templates, names=names,
        secrets=[s for s in secrets if s], fixed_content_type=fixed_content_type,
        batch_content_type=content_type or (
            "application/x-ndjson" if ndjson else "application/json"))
    shared.batch = shared.for_batch(static)
    return shared


class RequestBuilder:
    """The body and per-request headers of one batch."""

    def __init__(self, config: dict[str, Any]):
        secret = config["signing_secret"]
        self._key = signing_key(secret) if secret else None
        self._gzip = config["compression"] == "gzip"
        self._ndjson = config["batch_format"] == "ndjson"

    def build(self, batch: list[Delivery]) -> tuple[Extra, bytes]:
        """``(extra headers, body)``: ``webhook-id`` and ``Idempotency-Key`` (the delivery
        id, or a batch id stable for the same members), the signature headers when
        signing, and the body (a JSON array or ndjson for several events), gzipped when
        configured."""
        if len(batch) == 1:
            delivery = batch[0]
            body = delivery.body_json()
            message_id = delivery.id
        else:
            message_id = batch_id([d.seed for d in batch])
            if self._ndjson:
                body = b"\n".join([d.body_json() for d in batch]) + b"\n"
            else:
                body = b"[" + b",".join([d.body_json() for d in batch]) + b"]"
        extra = [("webhook-id", message_id), ("Idempotency-Key", message_id)]
        if self._key is not None:
            # Standard Webhooks: HMAC-SHA256 over "id.timestamp.body" (the body before
            # any Content-Encoding, as the receiver's framework hands it over)
            timestamp = str(int(time.time()))
            extra.append(("webhook-timestamp", timestamp))
            extra.append(("webhook-signature", sign(self._key, message_id, timestamp, body)))
        if self._gzip:
            body = gzip.compress(body, compresslevel=6, mtime=0)
        return extra, body
