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


#: C0 controls but horizontal tab, and DEL: RFC 9110 field values allow none of them
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: what :func:`printable` removes: C0 and C1 controls (tab included), DEL, and the
#: Unicode line and paragraph separators, all of which can end or rewrite a log line
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: the same but LF and tab
_UNPRINTABLE_IN_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def break_problem(value: str) -> str | None:
    """Why ``value`` could split or end a header (a NUL or a line break), or None.

    A NUL is named as a NUL: "line break" would send the user looking for the wrong
    character.
    """
    if "\0" in value:
        return "contains a NUL character (U+0000)"
    if "\r" in value or "\n" in value:
        return "contains a line break (CR or LF)"
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value, or None when it can.

    CR, LF and NUL could split or end the header; other control characters (but tab)
    are not allowed in a field value and some receivers or logs act on them. The
    answer never quotes the value: it may be a credential.
    """
    problem = break_problem(value)
    if problem is not None:
        return problem
    found = _HEADER_CONTROL.search(value)
    if found is not None:
        return f"contains a control character (U+{ord(found.group()):04X})"
    return None


def printable(text: str, *, keep_lines: bool = False) -> str:
    """``text`` without control characters or line separators.

    The one cleaner for every text that came from the network (a receiver's body,
    reason phrase, header or Location) before it reaches a terminal, a log line or a
    message: it must not be able to start a forged line, return the cursor over a
    verdict (CR) or send escape sequences (ESC). ``keep_lines`` keeps LF and tab, for
    a stored body whose lines matter (the dead-letter ``response``); CR goes anyway.
    """
    if keep_lines:
        return _UNPRINTABLE_IN_LINES.sub("", text)
    return _UNPRINTABLE.sub("", text)


def parse_header_list(text: str) -> list[tuple[str, str]]:
    """Parse the Netography portal's ``"Name: value, Other: value"`` header list.

    Items are separated by commas; empty items and a trailing comma are ignored. Each
    item splits at its *first* colon, so values may contain colons (URLs, times) and
    spaces. Names and values are stripped of surrounding white space. Raises
    ``ValueError`` for an item without a colon or with an empty name. Name and value
    checks (token characters, line breaks) are left to :func:`check_header`.
    """
    headers = []
    for position, item in enumerate(text.split(","), 1):
        item = item.strip()
        if not item:
            continue
        name, colon, value = item.partition(":")
        name = name.strip()
        # An item is not quoted in a message: it may be (part of) a secret value, e.g.
        # "X-Api-Key s3cret" or the rest of a value that held a comma. Its position and,
        # when it has several words, its first (the intended name) are enough to find it.
        if not colon:
            words = item.split()
            start = f" (starting {words[0][:40]!r})" if len(words) > 1 else ""
            raise ValueError(f"header item {position}{start} has no ':' "
                             "(expected 'Name: value'; a value cannot hold ',')")
        if not name:
            raise ValueError(f"header item {position} has no name before ':'")
        headers.append((name, value.strip()))
    return headers


def check_header(name: str, value: str | None = None) -> None:
    """Raise ``ValueError`` naming the header when ``name`` or ``value`` is unsafe.

    The value is never shown in the message: it may be a credential.
    """
    problem = break_problem(name)
    if problem is not None:
        raise ValueError(f"header name {printable(name)!r} {problem}")
    if not is_header_name(name):
        raise ValueError(f"invalid header name {name!r} (letters, digits and "
                         "!#$%&'*+-.^_`|~ only)")
    if value is not None:
        problem = header_value_problem(value)
        if problem is not None:
            raise ValueError(f"header '{name}': value {problem}")


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

    The server's own reason phrase is used when the status is not a standard one,
    without control characters (see :func:`printable`); it may still echo the request
    (and a token in its URL), so callers redact the result.
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = printable(reason or "").strip()
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
