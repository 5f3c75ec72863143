"""JSON text in and out, with every number kept exactly and nesting kept writable.

orjson is fast, but reads an integer beyond 64 bits as a float (``99999999999999999999999``
becomes ``1e+23``) and refuses to write one; it also reads values nested deeper than it can
write again (254 levels). These helpers keep orjson's speed for ordinary JSON and fall back
to the standard library only where orjson would change a value:

* :func:`loads` reads with orjson, and reads again with :mod:`json` (integers of any size)
  when the text holds a run of 20 or more digits, the only way to write such an integer.
* :func:`dumps` writes with orjson, and with :mod:`json` when orjson cannot write an integer.
* :func:`depth` measures nesting, so that the decoder can reject what could not be
  written again (:data:`MAX_DEPTH`).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import orjson

__all__ = ["loads", "dumps", "depth", "too_deep", "MAX_DEPTH", "JSONDecodeError"]

JSONDecodeError = orjson.JSONDecodeError

#: Deepest nesting (objects and arrays inside each other) an event may have. orjson writes
#: up to 254 levels; the margin leaves room for what wraps an event later (a dead-letter
#: record, a batch array, a mapping that nests it under a field).
MAX_DEPTH = 200

# Every integer orjson cannot hold has at least 20 digits (2**64 - 1 has 20). One
# C-speed pass maps every digit to "0" and both opening brackets to "{" (the rest to
# " "): 20 zeros in a row may be such an integer, and more than MAX_DEPTH "{" may be
# nesting too deep (see shape()).
_SHAPE = bytes(0x30 if 0x30 <= i <= 0x39 else 0x7B if i in (0x7B, 0x5B) else 0x20
               for i in range(256))
_LONG_RUN = b"0" * 20


def shape(data: bytes | bytearray) -> tuple[bool, bool]:
    """Two quick questions about JSON text, in one pass: may it hold an integer beyond
    64 bits, and may it nest deeper than :data:`MAX_DEPTH`? (No means certainly not.)"""
    mapped = data.translate(_SHAPE)
    return _LONG_RUN in mapped, mapped.count(b"{") > MAX_DEPTH


def _no_constant(name: str) -> Any:
    # orjson rejects NaN and Infinity: the exact path must agree (it only runs on text
    # orjson accepted, so this is a safeguard).
    raise ValueError(f"{name} is not valid JSON")


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text like ``orjson.loads``, but keep integers of any size exact.

    Raises ``orjson.JSONDecodeError`` (a ``json.JSONDecodeError``) for invalid text.
    """
    value = orjson.loads(data)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if _LONG_RUN in raw.translate(_SHAPE):
        # Maybe a big integer (or just a long digit run inside a string): read it again
        # with the standard library, which keeps integers exact.
        value = json.loads(raw, parse_constant=_no_constant)
    return value


def _plain(value: Any, default: Callable[[Any], Any] | None) -> Any:
    """What the standard library's encoder cannot do itself: orjson's Fragment."""
    if isinstance(value, orjson.Fragment):
        return json.loads(value.contents)
    if default is not None:
        return default(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any, *, option: int = 0, default: Callable[[Any], Any] | None = None) -> bytes:
    """Serialise like ``orjson.dumps``; integers beyond 64 bits are written exactly.

    Only ``OPT_INDENT_2`` and ``OPT_NON_STR_KEYS`` of orjson's options carry over to the
    (rare) fallback path, where keys are converted to strings as the standard library does.
    """
    try:
        return orjson.dumps(value, default=default, option=option)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise
    indent = 2 if option & orjson.OPT_INDENT_2 else None
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent,
                      separators=(",", ": ") if indent else (",", ":"),
                      default=lambda v: _plain(v, default))
    return text.encode("utf-8")


def too_deep(text: bytes | bytearray | str, value: Any) -> bool:
    """Is ``value``, parsed from ``text``, nested deeper than :data:`MAX_DEPTH`?

    Counting brackets in the text first (a C-speed pass) spares ordinary values the walk.
    """
    if isinstance(text, str):
        brackets = text.count("{") + text.count("[")
    else:
        brackets = text.count(b"{") + text.count(b"[")
    if brackets <= MAX_DEPTH:
        return False
    return depth(value) > MAX_DEPTH


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value`` nests objects and arrays (a scalar is 0, ``{}`` is 1).

    Stops counting past ``limit`` (returns ``limit + 1``), without recursion, so any depth
    is safe to measure.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, level + 1))
    return deepest
