"""Declarative settings for outputs: types, defaults, aliases and validation.

An output class lists its settings as ``settings = {"url": Setting(str, required=True)}``.
The core validates a user's table against that list, so every output, a third-party one
too, gets the same precise messages: the key path, the problem, "did you mean".
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from nwpipe.errors import ConfigError

_MISSING = object()

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


@dataclass(frozen=True)
class Setting:
    """One setting of an output type.

    ``type`` is a Python type or a tuple of them (``(str, dict)``); ``float`` accepts
    integers too. ``aliases`` are other accepted names (the Netography portal's names,
    for instance); ``secret`` values never appear in messages; ``check`` may convert or
    reject a value by raising ``ValueError`` with a message for the user.
    """

    type: type | tuple[type, ...] = str
    default: Any = None
    required: bool = False
    help: str = ""
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()
    secret: bool = False
    check: Callable[[Any], Any] | None = field(default=None, compare=False)

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)

    def accepts(self, value: Any) -> bool:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        for t in types:
            if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
            if t is int and isinstance(value, bool):
                continue
            if isinstance(value, t):
                return True
        return False


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def did_you_mean(name: str, candidates) -> str:
    """A " (did you mean 'x'?)" suffix, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def validate_settings(table: dict, schema: dict[str, Setting], *, key: str,
                      file: str | None = None) -> dict[str, Any]:
    """Check ``table`` against ``schema``; return every setting with defaults filled in.

    Raises ConfigError naming ``key.<setting>`` for an unknown key, a wrong type, a value
    outside ``choices``, or a missing required setting.
    """
    names = {}
    for name, setting in schema.items():
        names[name] = name
        for alias in setting.aliases:
            names[alias] = name
    result: dict[str, Any] = {}
    for given, value in table.items():
        if given not in names:
            raise ConfigError(f"unknown setting '{given}'{did_you_mean(given, names)}",
                              key=_join(key, given), file=file)
        name = names[given]
        if name in result:
            raise ConfigError(f"'{given}' and '{name}' set the same thing; keep one",
                              key=_join(key, given), file=file)
        setting = schema[name]
        if not setting.accepts(value):
            raise ConfigError(f"must be {setting.type_name()}, got {type(value).__name__}",
                              key=_join(key, given), file=file)
        if setting.choices is not None and value not in setting.choices:
            shown = "the given value" if setting.secret else repr(value)
            raise ConfigError(f"{shown} is not one of {', '.join(map(repr, setting.choices))}",
                              key=_join(key, given), file=file)
        if setting.type is float and isinstance(value, int):
            value = float(value)
        if setting.check is not None:
            try:
                value = setting.check(value)
            except ValueError as exc:
                raise ConfigError(str(exc), key=_join(key, given), file=file) from None
        result[name] = value
    for name, setting in schema.items():
        if name not in result:
            if setting.required:
                raise ConfigError("required setting is missing", key=_join(key, name), file=file)
            result[name] = setting.default
    return result


# -- checks for Setting(check=...) that outputs share -----------------------------------

def existing_file(value: str) -> str:
    """A path to a file that exists (``~`` expanded); for ``Setting(check=...)``."""
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        raise ValueError(f"file not found: {value}")
    return path


def positive_seconds(value: float) -> float:
    """A duration greater than 0; for ``Setting(check=...)``."""
    if not value > 0:
        raise ValueError("timeout must be more than 0 seconds")
    return value
