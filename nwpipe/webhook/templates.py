"""URL and header templates of the webhook output: compiled once, rendered per event."""

from __future__ import annotations

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


def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    # The one sandboxed environment factory of nwpipe (every filter, a plugin's too,
    # undefined names an error); URLs get a variant that percent-encodes every
    # expression's value. Made per output, so filters registered since are included.
    from nwpipe.transform.templating import output_environment

    return output_environment(finalize=_url_value), output_environment()


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
