"""What of a webhook's configuration a message must never show (credentials, tokens in
the URL's query and path), and :class:`Redactor`, which hides it in the receiver's words."""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote, unquote, unquote_plus

from nwpipe.net.httputil import printable, redact
from nwpipe.webhook.templates import is_template

#: user headers whose values are treated as credentials (kept out of messages)
CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|pass|cookie|session|signature", re.I)
#: a URL path segment that looks like a token rather than a name: 16 or more letters,
#: digits, "-" or "_", with a digit or with both upper and lower case
TOKEN_LIKE = re.compile(r"(?=.*\d|(?=.*[a-z])(?=.*[A-Z]))[A-Za-z0-9_-]{16,}")
#: the shortest query value taken for a secret when its name does not say it is one:
#: shorter ones ("v=1") would blank out ordinary text in every message
_MIN_QUERY_SECRET = 4


def query_secrets(rest: str) -> list[str]:
    """The parts of a configured URL's query that may be credentials (``?token=...``).

    The whole query, and each value as written and decoded: a receiver may echo any
    of them (in a reason phrase, a Location, a body). A short value counts only under
    a name that says it is a credential. Templated values are rendered per event and
    are left out.
    """
    query = rest.partition("?")[2].split("#", 1)[0]
    secrets: list[str] = []
    for item in query.split("&"):
        name, _, raw = item.partition("=")
        if not raw or is_template(raw):
            continue
        value = unquote_plus(raw)
        if len(value) >= _MIN_QUERY_SECRET or CREDENTIAL_HEADER.search(unquote_plus(name)):
            secrets.extend((raw, value, quote(value, safe="")))
    if secrets or len(query) >= _MIN_QUERY_SECRET:
        secrets.extend((query, unquote(query)))
    return [s for s in secrets if s and not is_template(s)]


def path_secrets(rest: str) -> list[str]:
    """The token-like segments of a configured URL's path (Slack's
    ``/services/T…/B…/<token>``): a receiver that echoes the path (a 404 body, a
    Location) must not show them."""
    path = rest.split("?", 1)[0].split("#", 1)[0]
    secrets: list[str] = []
    for segment in path.split("/"):
        if segment and not is_template(segment):
            decoded = unquote(segment)
            if TOKEN_LIKE.fullmatch(decoded):
                secrets.extend((segment, decoded))
    return secrets


def substituted_spans(url: str, origin: str) -> list[tuple[int, int]]:
    """Where, in the path and query of ``url`` (the part after ``origin``, as
    :func:`nwpipe.webhook.checks.split_url` cuts it), text from a ``${VAR}`` substitution
    lies: ``(start, end)`` offsets into that part."""
    spans = getattr(url, "spans", ())
    start = len(url) - len(url.lstrip()) + len(origin)
    end = len(url.rstrip())
    inside = [(max(a, start) - start, min(b, end) - start) for a, b in spans]
    return [(a, b) for a, b in inside if b > a]


def substituted_secrets(rest: str, spans: list[tuple[int, int]]) -> list[str]:
    """The substituted texts of a URL's path and query, as written and decoded: secrets
    whatever their length (the user put them in the environment, not in the file)."""
    secrets: list[str] = []
    for a, b in spans:
        text = rest[a:b]
        secrets.extend((text, unquote(text), unquote_plus(text)))
    return [s for s in secrets if s]


def hide_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each substituted span shown as "…" (its "/" and "?" kept, so the
    shape of the path stays readable)."""
    shown, done = [], 0
    for a, b in sorted(spans):
        if a < done:
            a = done
        shown.append(text[done:a])
        shown.append(re.sub(r"[^/?]+", "…", text[a:b]))
        done = max(done, b)
    shown.append(text[done:])
    return "".join(shown)


def display_path(rest: str, spans: list[tuple[int, int]] | None = None) -> str:
    """The path and query of a configured URL for ``describe``: text from ``${VAR}``
    (``spans``) and token-like path segments as "…", and only that there is a query
    ("?…")."""
    if spans:
        rest = hide_spans(rest, spans)
    path, question, _ = rest.partition("?")
    path = "/".join("…" if TOKEN_LIKE.fullmatch(part) else part for part in path.split("/"))
    return path + ("?…" if question else "")


class Redactor:
    """Cleans every text that came from the network before it is shown or stored.

    ``say`` strips control characters (:func:`nwpipe.net.httputil.printable`) and then
    hides each secret, so a receiver that echoes a credential or the URL's token (in
    a body, a reason phrase, a Location) never gets it into a log line, a terminal or
    the dead-letter file.
    """

    def __init__(self, secrets: Iterable[str]):
        # longest first: a secret that contains another is hidden whole
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def say(self, text: str, *, keep_lines: bool = False) -> str:
        """``text`` without control characters and secrets (``***``)."""
        # clean before redacting: a control character inside a secret would hide it
        return redact(printable(text, keep_lines=keep_lines), self.secrets)
