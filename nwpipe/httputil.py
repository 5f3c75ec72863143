"""Small HTTP helpers shared by HTTP outputs: header lists, Retry-After, reasons.

Pure functions with no I/O, so they are cheap to test and to call on a hot path.
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Iterable

#: RFC 7230 section 3.2.6: a header name is a "token" of these characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: the longest wait a ``Retry-After`` may ask for; a receiver asking for a day is
#: misconfigured, and the engine's own retry limits still apply on top of this.
MAX_RETRY_AFTER = 3600.0


def is_header_name(name: str) -> bool:
    """True when ``name`` is a valid HTTP header name (an RFC 7230 token)."""
    return _TOKEN.fullmatch(name) is not None


def has_line_break(value: str) -> bool:
    """True when ``value`` contains CR, LF or NUL, which could split or end a header."""
    return "\r" in value or "\n" in value or "\0" in value


def parse_header_list(text: str) -> list[tuple[str, str]]:
    """Parse the Netography portal's ``"Name: value, Other: value"`` header list.

    Items are separated by commas; empty items and a trailing comma are ignored. Each
    item splits at its *first* colon, so values may contain colons (URLs, times) and
    spaces. Names and values are stripped of surrounding white space. Raises
    ``ValueError`` for an item without a colon or with an empty name. Name and value
    checks (token characters, line breaks) are left to :func:`check_header`.
    """
    headers = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, colon, value = item.partition(":")
        name = name.strip()
        if not colon:
            raise ValueError(f"header item {item!r} has no ':' (expected 'Name: value')")
        if not name:
            raise ValueError(f"header item {item!r} has no name before ':'")
        headers.append((name, value.strip()))
    return headers


def check_header(name: str, value: str | None = None) -> None:
    """Raise ``ValueError`` naming the header when ``name`` or ``value`` is unsafe.

    The value is never shown in the message: it may be a credential.
    """
    if has_line_break(name):
        raise ValueError(f"header name {name!r} contains a line break")
    if not is_header_name(name):
        raise ValueError(f"invalid header name {name!r} (letters, digits and "
                         "!#$%&'*+-.^_`|~ only)")
    if value is not None and has_line_break(value):
        raise ValueError(f"header '{name}': value contains a line break (CR or LF)")


def parse_retry_after(value: str | None, *, now: float | None = None,
                      cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None when absent or invalid.

    Accepts delay-seconds (``"120"``; a decimal like ``"1.5"`` is tolerated) and an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``). A date in the past gives 0.
    The result is capped at ``cap`` seconds.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            # RFC 9110 dates are always GMT; a zone-less date is not one of them
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    else:
        if seconds != seconds or seconds < 0:  # NaN or negative: nonsense
            return None
    return min(max(seconds, 0.0), cap)


def status_reason(status: int, reason: str | None = None) -> str:
    """``"HTTP 400 Bad Request"``: the status with its standard phrase.

    The server's own reason phrase is used when the status is not a standard one.
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = reason or ""
    return f"HTTP {status} {phrase}".rstrip()


def snippet(data: bytes, limit: int = 1024) -> str:
    """The first ``limit`` bytes of a response body as text (undecodable bytes replaced)."""
    return data[:limit].decode("utf-8", errors="replace")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text
