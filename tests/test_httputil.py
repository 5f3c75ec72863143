"""Header lists, header checks and Retry-After parsing."""

from __future__ import annotations

import email.utils

import pytest

from nwpipe.net.httputil import (
    break_problem,
    check_header,
    header_value_problem,
    parse_header_list,
    parse_retry_after,
    printable,
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


def test_header_item_without_colon_names_its_position_and_first_word_only():
    with pytest.raises(ValueError) as info:
        parse_header_list("X-Api-Key supersecret123, X-B: c")
    assert str(info.value).startswith("header item 1 (starting 'X-Api-Key') has no ':'")
    assert "supersecret123" not in str(info.value)
    # a lone word may be a value split off at a comma: it is not shown at all
    with pytest.raises(ValueError) as info:
        parse_header_list("X-Api-Key: abc, def123secret")
    assert "header item 2 has no ':'" in str(info.value)
    assert "def123secret" not in str(info.value)


def test_header_item_without_name_does_not_show_its_value():
    with pytest.raises(ValueError) as info:
        parse_header_list("X-A: 1, : s3cr3t-value")
    assert "header item 2 has no name before ':'" in str(info.value)
    assert "s3cr3t-value" not in str(info.value)


@pytest.mark.parametrize("value", ["a\x0bb", "a\x7fb", "a\x1bb", "a\x08b", "a\x1fb"])
def test_header_values_with_control_characters_are_refused(value):
    with pytest.raises(ValueError, match="control character") as info:
        check_header("X-Api-Key", value)
    assert value not in str(info.value)


def test_status_reason_strips_control_characters_from_the_receiver_phrase():
    assert status_reason(599, "Bad\r\nnwpipe: forged\x1b[2J") == "HTTP 599 Badnwpipe: forged[2J"
    assert status_reason(599, "\x85\u2028") == "HTTP 599"


def test_printable():
    assert printable("a\tb\x00c\x7fd\x9fe\u2028f é ✓") == "abcdef é ✓"
    # keep_lines: for a stored body, LF and tab stay; CR and the rest go
    assert printable("a\n\tb\r\x1b[1Ac\x00\u2028", keep_lines=True) == "a\n\tb[1Ac"


def test_a_nul_is_reported_as_a_nul():
    assert break_problem("a\0b") == header_value_problem("a\0b") \
        == "contains a NUL character (U+0000)"
    assert break_problem("a\nb") == "contains a line break (CR or LF)"
    assert break_problem("a\tb") is None
    with pytest.raises(ValueError, match="NUL character"):
        check_header("X-A\0", "v")
