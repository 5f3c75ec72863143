"""Declarative settings for outputs: types, defaults, aliases and validation.

An output class lists its settings as ``settings = {"url": Setting(str, required=True)}``.
The core validates a user's table against that list, so every output, a third-party one
too, gets the same precise messages: the key path, the problem, "did you mean".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from nwpipe.errors import ConfigError, Problems

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
    import difflib  # only a mistake needs it

    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Substituted(str):
    """Text of the config with ``${VAR}`` substitutions in it: ``spans`` are the
    ``(start, end)`` of each text taken from the environment, so that it (a token in a
    URL's path) can be hidden wherever the text is shown, whatever its length."""

    spans: tuple[tuple[int, int], ...] = ()

    def __new__(cls, text: str, spans: tuple[tuple[int, int], ...] = ()):
        self = super().__new__(cls, text)
        self.spans = spans
        return self

    def parts(self) -> list[str]:
        """The substituted texts (those that are not empty)."""
        return [self[a:b] for a, b in self.spans if b > a]


def substituted_parts(value: Any) -> list[str]:
    """The texts of ``value`` (a string, or a table or list of them) that came from the
    environment through ``${VAR}``; none for text written in the config itself."""
    if isinstance(value, Substituted):
        return value.parts()
    if isinstance(value, dict):
        return [p for v in value.values() for p in substituted_parts(v)]
    if isinstance(value, list):
        return [p for v in value for p in substituted_parts(v)]
    return []


class EnvText(Substituted):
    """A setting's whole value taken from ``${VAR}`` / ``${VAR:-default}``: text that
    may still become the setting's type (``port = "${SYSLOG_PORT:-514}"`` is an int)."""

    variable: str

    def __new__(cls, text: str, variable: str = "", spans=None):
        self = super().__new__(cls, text, ((0, len(text)),) if spans is None else spans)
        self.variable = variable
        return self


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _from_env(value: EnvText, setting: Setting, where: str, file: str | None) -> Any:
    """``value`` as the setting's type, or a ConfigError naming the variable."""
    text = str(value)
    if setting.accepts(text):
        # still known as substituted: a message must not show it
        return Substituted(text, value.spans)
    types = setting.type if isinstance(setting.type, tuple) else (setting.type,)
    word = text.strip()
    for t in types:
        try:
            if t is bool:
                if word.lower() in _TRUE | _FALSE:
                    return word.lower() in _TRUE
                continue
            if t is int:
                return int(word.replace("_", ""))
            if t is float:
                return float(word)
            if t is list:
                return [part.strip() for part in text.split(",") if part.strip()]
        except ValueError:
            continue
    shown = "its value" if setting.secret else repr(text)
    hint = " (true/false, yes/no, on/off or 1/0)" if bool in types else ""
    if list in types:
        hint = " (a comma-separated list)"
    raise ConfigError(f"environment variable {value.variable} must be {setting.type_name()}"
                      f"{hint}, got {shown}", key=where, file=file)


def plain(value: Any) -> Any:
    """``value`` with every :class:`EnvText` inside turned into a string (still a
    :class:`Substituted`, which knows what came from the environment)."""
    if isinstance(value, EnvText):
        return Substituted(str(value), value.spans)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def validate_settings(table: dict, schema: dict[str, Setting], *, key: str,
                      file: str | None = None) -> dict[str, Any]:
    """Check ``table`` against ``schema``; return every setting with defaults filled in.

    Raises ConfigError naming ``key.<setting>`` for an unknown key, a wrong type, a value
    outside ``choices``, or a missing required setting; several problems at once are a
    :class:`nwpipe.errors.ConfigErrors` listing each. A value that is a whole ``${VAR}``
    (:class:`EnvText`) is converted to the setting's type first.
    """
    names = {}
    for name, setting in schema.items():
        names[name] = name
        for alias in setting.aliases:
            names[alias] = name
    result: dict[str, Any] = {}
    problems = Problems()
    #: settings a misspelt key was taken for: not reported missing a second time
    suggested: set[str] = set()

    def one(given: str, value: Any) -> None:
        if given not in names:
            import difflib  # only a mistake needs it

            close = difflib.get_close_matches(given, list(names), n=1, cutoff=0.6)
            suggested.update(names[c] for c in close)
            raise ConfigError(f"unknown setting '{given}'{did_you_mean(given, names)}",
                              key=_join(key, given), file=file)
        name = names[given]
        if name in result:
            raise ConfigError(f"'{given}' and '{name}' set the same thing; keep one",
                              key=_join(key, given), file=file)
        setting = schema[name]
        if isinstance(value, EnvText):
            value = _from_env(value, setting, _join(key, given), file)
        if not setting.accepts(value):
            got = "str" if isinstance(value, str) else type(value).__name__
            raise ConfigError(f"must be {setting.type_name()}, got {got}",
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

    for given, value in table.items():
        with problems.collect():
            one(given, value)
    for name, setting in schema.items():
        if name not in result:
            if setting.required and name not in suggested \
                    and not any(names.get(g) == name for g in table):
                problems.errors.append(ConfigError("required setting is missing",
                                                   key=_join(key, name), file=file))
            result[name] = setting.default
    problems.raise_if_any()
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
