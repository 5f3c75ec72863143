"""One reading of event times, shared by every output and Jinja filter.

Netography sends epoch seconds (``timestamp``, ``start``, ``end``; ``end = 0`` while an
alert is open), but mappings, replays and other tools hand over milliseconds,
microseconds, numeric strings and ISO 8601 text. :func:`epoch_millis` turns any of them
into whole milliseconds since 1970 UTC, rounded to the nearest millisecond (half up), so
that ``1689391131.9996`` is ``...:52.000`` and never ``...:51`` with a lost carry.

The unit of a number is told by its size, which leaves no overlap for any date between
1973 and 5138:

==================  ==============
``abs(n) < 1e11``   seconds
``< 1e14``          milliseconds
``< 1e17``          microseconds
otherwise           nanoseconds
==================  ==============
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from numbers import Real
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: the first value (by absolute size) read as the next smaller unit, and that unit's
#: milliseconds per unit
_UNITS = ((Decimal("1e11"), Decimal(1000)), (Decimal("1e14"), Decimal(1)),
          (Decimal("1e17"), Decimal("0.001")), (None, Decimal("0.000001")))
_MIN_MS = -62135596800000   # 0001-01-01T00:00:00Z
_MAX_MS = 253402300799999   # 9999-12-31T23:59:59.999Z
_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?)?"
    r"\s*([Zz]|[+-]\d\d(?::?\d\d)?)?")


class TimeValueError(ValueError):
    """A value that is not a time; the message says what was given."""


def epoch_millis(value: Any) -> int | None:
    """Any event time as whole milliseconds since 1970-01-01 UTC, or None when absent.

    Accepts numbers (seconds, milliseconds, microseconds or nanoseconds, by size),
    numeric strings, and ISO 8601 / RFC 3339 text (``2023-07-15T03:18:51.25Z``; no zone
    means UTC). ``None``, ``""`` and ``0`` are "no time" (the vendor's open ``end``).
    Raises :class:`TimeValueError` for anything else, NaN, infinities and dates outside
    the years 1 to 9999.
    """
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise TimeValueError(f"expected a time, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        match = _ISO.fullmatch(text)
        if match:
            return _check_range(_iso_millis(match, value), value)
        number = _decimal(text, value)
    elif isinstance(value, (Real, Decimal)):
        number = _decimal(repr(value) if isinstance(value, float) else str(value), value)
    else:
        raise TimeValueError(f"expected a time, got {value!r}")
    if number == 0:
        return None
    size = abs(number)
    for limit, per_unit in _UNITS:
        if limit is None or size < limit:
            millis = (number * per_unit).to_integral_value(ROUND_HALF_UP)
            return _check_range(int(millis), value)
    raise AssertionError("unreachable")


def iso_utc(millis: int) -> str:
    """Milliseconds since 1970 as ISO 8601 UTC: ``2023-07-15T03:18:51Z``, with
    ``.250`` when the time is not a whole second."""
    moment = to_datetime(millis)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = millis % 1000
    return f"{text}.{fraction:03d}Z" if fraction else text + "Z"


def to_datetime(millis: int) -> datetime:
    """Milliseconds since 1970 as an aware UTC ``datetime``."""
    return _EPOCH + timedelta(milliseconds=millis)


def _decimal(text: str, original: Any) -> Decimal:
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        raise TimeValueError(f"expected a time, got {original!r}") from None
    if not number.is_finite():
        raise TimeValueError(f"expected a time, got {original!r}")
    return number


def _iso_millis(match: re.Match, original: str) -> int:
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                          int(second or 0), tzinfo=timezone.utc)
    except ValueError as exc:
        raise TimeValueError(f"{original!r} is not a valid date: {exc}") from None
    millis = (moment - _EPOCH) // timedelta(milliseconds=1)
    if fraction:
        millis += int((Decimal("0." + fraction) * 1000).to_integral_value(ROUND_HALF_UP))
    if zone and zone not in "Zz":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 60 + int(digits[2:] or 0)
        if offset >= 24 * 60:
            raise TimeValueError(f"{original!r} has an invalid UTC offset")
        millis -= sign * offset * 60_000
    return millis


def _check_range(millis: int, original: Any) -> int:
    if not _MIN_MS <= millis <= _MAX_MS:
        raise TimeValueError(f"{original!r} is out of range (years 1 to 9999)")
    return millis
