"""Header lists, header checks and Retry-After parsing."""

from __future__ import annotations

import email.utils

import pytest

from nwpipe.httputil import (
    check_header,
    parse_header_list,
    parse_retry_after,
    redact,
    snippet,
    status_reason,
)

NOW = 1_700_000_000.0


def test_header_list_splits_at_the_first_colon_and_skips_empty_items():
    text = " X-Netography: Webhook,X-Url: http://a.example:80/x , ,X-Two:  a b  ,"
    assert parse_header_list(text) == [
        ("X-Netography", "Webhook"),
        ("X-Url", "http://a.example:80/x"),
        ("X-Two", "a b"),
    ]
    assert parse_header_list("") == []
    assert parse_header_list(" , ,") == []


@pytest.mark.parametrize("text, problem", [
    ("X-A: 1, oops", "no ':'"),
    (": value", "no name"),
])
def test_header_list_errors(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_header_list(text)


@pytest.mark.parametrize("name, value", [
    ("X Space", "v"),
    ("X:Colon", "v"),
    ("", "v"),
    ("X-A\r\n", "v"),
    ("X-A", "a\r\nb"),
    ("X-A", "a\nb"),
    ("X-A", "a\0b"),
])
def test_unsafe_headers_are_refused(name, value):
    with pytest.raises(ValueError):
        check_header(name, value)


def test_valid_header_passes():
    check_header("X-Api_Key.v2~!#$%&'*+^`|", "any: value, with spaces")


@pytest.mark.parametrize("header, expected", [
    ("120", 120.0),
    (" 0 ", 0.0),
    ("1.5", 1.5),
    (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
    (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),  # already past: go now
    ("86400000", 3600.0),  # capped
    (None, None),
    ("", None),
    ("-5", None),
    ("nan", None),
    ("soon", None),
    ("Wed, 99 Foo 2015 07:28:00 GMT", None),
])
def test_retry_after(header, expected):
    assert parse_retry_after(header, now=NOW) == expected


def test_retry_after_cap_is_adjustable():
    assert parse_retry_after("500", cap=60) == 60


def test_status_reason():
    assert status_reason(400) == "HTTP 400 Bad Request"
    assert status_reason(429) == "HTTP 429 Too Many Requests"
    assert status_reason(599, "Custom Thing") == "HTTP 599 Custom Thing"
    assert status_reason(599) == "HTTP 599"


def test_snippet_and_redact():
    assert snippet(b"a" * 2000) == "a" * 1024
    assert snippet("é".encode() * 600, limit=5) == "éé\ufffd"
    assert redact("token=abc and abc", ["abc", ""]) == "token=*** and ***"
