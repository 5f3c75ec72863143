"""URL and header templates of the webhook output: compiled once, rendered per event."""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import quote

import jinja2

from nwpipe.outputs import Delivery

_TEMPLATE_MARKS = ("{{", "{%", "{#")


def is_template(text: str) -> bool:
    """True when ``text`` holds Jinja syntax (an expression, a statement or a comment)."""
    return any(mark in text for mark in _TEMPLATE_MARKS)


def _url_value(value: Any) -> str:
    """Percent-encode every ``{{ }}`` value of a URL template.

    Nothing in a value is left unescaped, ``/``, ``?``, ``&``, ``#`` and ``%``
    included, so event data can fill one path segment or one query value and never
    change the URL's shape.
    """
    return quote(value if isinstance(value, str) else str(value), safe="")


@cache
def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    # The one sandboxed environment of nwpipe (every built-in filter, undefined names
    # an error), made once per process; URLs get a variant that percent-encodes
    # every expression's value.
    from nwpipe.transform.templating import make_environment

    header_env = make_environment()
    return header_env.overlay(finalize=_url_value), header_env


def compile_template(kind: str, source: str, what: str) -> jinja2.Template:
    """Compile a ``"url"`` or ``"header"`` template; ``ValueError`` naming ``what``
    for a syntax error."""
    url_env, header_env = _environments()
    try:
        return (url_env if kind == "url" else header_env).from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"{what}: template error: {exc.message} (line {exc.lineno})") from None


def render(template: jinja2.Template, delivery: Delivery) -> str:
    """Render with the original event's fields as names, and ``body`` (the mapped event)."""
    return template.render(delivery.event, body=delivery.body)
