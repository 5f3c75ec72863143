"""One time normalisation: units by size, strings, rounding, and the boundaries."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nwpipe.transform.timeutil import TimeValueError, epoch_millis, iso_utc, to_datetime

T = 1689391131000  # 2023-07-15T03:18:51Z in milliseconds


@pytest.mark.parametrize("value, millis", [
    (1689391131, T),                           # seconds
    (1689391131.25, T + 250),
    (1689391131.9996, T + 1000),               # rounds up into the next second
    (1689391131.9994, T + 999),
    (1689391131.0005, T + 1),                  # half up
    (1689391131000, T),                        # milliseconds
    (1689391131999.6, T + 1000),
    (1689391131000000, T),                     # microseconds
    (1689391131999500, T + 1000),
    (1689391131000000000, T),                  # nanoseconds
    ("1689391131", T),                         # numeric strings
    (" 1689391131.5 ", T + 500),
    ("1689391131000", T),
    (Decimal("1689391131.9996"), T + 1000),
    ("2023-07-15T03:18:51Z", T),               # ISO 8601 / RFC 3339
    ("2023-07-15T03:18:51.9996Z", T + 1000),
    ("2023-07-15 03:18:51", T),                # no zone: UTC
    ("2023-07-15T05:18:51+02:00", T),
    ("2023-07-14T22:18:51-0500", T),
    ("2023-07-15", T - (3 * 3600 + 18 * 60 + 51) * 1000),
    (99999999999, 99999999999000),             # the last value read as seconds (5138)
    (100000000000, 100000000000),              # the first read as milliseconds (1973)
    (99999999999999, 99999999999999),          # the last milliseconds
    (100000000000000, 100000000000),           # the first microseconds
    (-1, -1000),                               # before 1970
])
def test_epoch_millis(value, millis):
    assert epoch_millis(value) == millis


@pytest.mark.parametrize("value", [None, "", "   ", 0, 0.0, "0"])
def test_absent_times(value):
    # the vendor sends end = 0 while an alert is open
    assert epoch_millis(value) is None


@pytest.mark.parametrize("value, message", [
    ("yesterday", "expected a time, got 'yesterday'"),
    (True, "expected a time, got True"),
    ([1], "expected a time, got [1]"),
    (float("nan"), "expected a time"),
    (float("inf"), "expected a time"),
    ("2023-02-30T00:00:00Z", "is not a valid date"),
    ("2023-07-15T03:18:51+25:00", "invalid UTC offset"),
    (1e30, "out of range"),
])
def test_what_is_not_a_time(value, message):
    with pytest.raises(TimeValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        epoch_millis(value)


@pytest.mark.parametrize("millis, text", [
    (T, "2023-07-15T03:18:51Z"),
    (T + 1, "2023-07-15T03:18:51.001Z"),
    (T + 999, "2023-07-15T03:18:51.999Z"),
    (T + 1000, "2023-07-15T03:18:52Z"),
    (-1, "1969-12-31T23:59:59.999Z"),
    (253402300799999, "9999-12-31T23:59:59.999Z"),
])
def test_iso_utc(millis, text):
    assert iso_utc(millis) == text


def test_rounding_carries_into_minutes_and_days():
    assert iso_utc(epoch_millis(1689465599.9999)) == "2023-07-16T00:00:00Z"
    assert to_datetime(epoch_millis("2023-07-15T23:59:59.9999Z")).day == 16


def test_isotime_filter_uses_the_same_reading():
    from nwpipe.transform.templating import isotime
    # before: milliseconds rounded to 1000 were dropped, giving ...:51Z
    assert isotime(1689391131.9996) == "2023-07-15T03:18:52Z"
    assert isotime(1689391131000000) == "2023-07-15T03:18:51Z"
    assert isotime("2023-07-15T03:18:51.25Z") == "2023-07-15T03:18:51.250Z"
    assert isotime(1689391131.9996, "%H:%M:%S") == "03:18:52"
