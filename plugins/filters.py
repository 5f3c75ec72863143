"""Built-in Jinja filters (isotime, join_ips, tojson, severity_number, lookup,
human_duration), registered through the same hook as a user's filters."""

from __future__ import annotations

from typing import Callable

from nwpipe import hookimpl
from nwpipe.transform.templating import BUILTIN_FILTERS


@hookimpl
def register_jinja_filters(register: Callable[[str, Callable], None]) -> None:
    """Register every built-in filter; a plugin registering the same name replaces it."""
    for name, function in BUILTIN_FILTERS.items():
        register(name, function)
