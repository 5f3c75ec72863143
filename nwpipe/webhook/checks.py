"""Checks of the webhook output's settings, run when the config loads: each raises
``ValueError`` with a message that names the problem and never quotes a secret."""

from __future__ import annotations

from typing import Callable
from urllib.parse import unquote

from yarl import URL

from nwpipe.net.httputil import (
    break_problem,
    check_header,
    header_value_problem,
    parse_header_list,
)
from nwpipe.webhook.templates import compile_template, is_template

#: headers the webhook output sets itself; a user's value would break signing or framing
RESERVED_HEADERS = frozenset({
    "content-length", "content-encoding", "transfer-encoding", "host", "connection",
    "webhook-id", "webhook-timestamp", "webhook-signature", "idempotency-key",
})


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
    if "#" in rest and not is_template(rest):
        raise ValueError("url must not contain a fragment ('#...'): it is never sent")
    return origin, rest


def check_url(url: str) -> str:
    """The ``url`` setting: see :func:`split_url`; a template must compile."""
    _origin, rest = split_url(url)
    if is_template(rest):
        compile_template("url", rest, "url")
    else:
        check_path_segments(rest)
    return url


def check_path_segments(rest: str) -> None:
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
        if is_template(item):
            compile_template("header", item, f"header '{name}'")
    return pairs


def check_headers(value: str | dict) -> str | dict:
    """The ``headers`` setting: see :func:`parse_headers`."""
    parse_headers(value)
    return value


def check_method(value: str) -> str:
    """The ``method`` setting: POST or PUT, in any case."""
    method = value.strip().upper()
    if method not in ("POST", "PUT"):
        raise ValueError(f"method must be POST or PUT, got {value!r}")
    return method


def _check_with(what: str, problem_of: Callable[[str], str | None]) -> Callable[[str], str]:
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem is not None:
            raise ValueError(f"{what} {problem}")
        return value
    return check


def check_no_line_break(what: str) -> Callable[[str], str]:
    """A check for a setting that must not hold CR, LF or NUL."""
    return _check_with(what, break_problem)


def check_header_value(what: str) -> Callable[[str], str]:
    """A check for a setting sent as a header value (no control characters)."""
    return _check_with(what, header_value_problem)


def check_username(value: str) -> str:
    """The ``username`` setting: RFC 7617 allows no colon in a Basic Auth user-id."""
    if ":" in value:
        raise ValueError("username must not contain ':'")
    return check_no_line_break("username")(value)


def check_proxy(value: str) -> str:
    """The ``proxy`` setting: an http(s) URL with a host."""
    try:
        url = URL(value)
    except ValueError:
        raise ValueError("proxy is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("proxy must be an http:// or https:// URL with a host")
    return value


def check_compression(value: str) -> str:
    """The ``compression`` setting: "gzip" or "none"."""
    value = value.strip().lower()
    if value not in ("gzip", "none", ""):
        raise ValueError(f"compression must be \"gzip\" or \"none\", got {value!r}")
    return value
