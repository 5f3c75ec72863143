"""compile_path gives exactly jsonpath-ng's results, fast path or not."""

from __future__ import annotations

import copy
import functools
import itertools
import warnings

import jsonpath_ng.ext
import jsonpath_ng.jsonpath
import pytest

from nwpipe.transform import jsonpaths
from nwpipe.transform.jsonpaths import MISSING, compile_path

VENDOR_EVENT = {
    "alerttype": "start", "algorithm": "knownbotnet", "beta": False, "bypassdisplay": False,
    "cachekey": "1.2.3.4 7.8.9.10", "categories": ["iprep"], "customer": "acme",
    "description": "Srcip reputation is a known botnet", "dstinternal": "",
    "dstip": ["7.8.9.10"], "duration": 0, "end": 0, "factorcount": "", "factors": "",
    "flowsrcname": "", "id": "00edee24-bc66-4b37-803c-123456789012", "ignore": False,
    "input": "", "ipinfo": [{"ip": "1.2.3.4", "asn": 64500}, {"ip": "7.8.9.10", "asn": 3}],
    "ipinfocount": 2, "lasttimestamp": 0,
    "metrics": {"bits": {"avg": 0.0, "max": 0, "min": 0, "sum": 0},
                "count": {"flow": 1}, "hasclock": False},
    "name": "", "output": "", "rollupperiod": 300, "rulecount": 0, "rules": None,
    "severity": "medium", "site": "", "srcinternal": "", "srcip": ["1.2.3.4"],
    "start": 1689391131, "summary": "Knownbotnet alert has started", "tag": "",
    "tags": ["tag1", "tag2", "tag3"], "threshold": "count(track_by) >= 1",
    "timestamp": 1689391131, "track": "srcip dstip", "track_by": ["srcip", "dstip"],
    "updatecount": 1, "updateinterval": 300,
}

# Data of every shape a path can meet: missing keys, lists where objects are expected
# and the other way round, nulls, strings, numbers, nested and empty arrays.
DATA = [
    {"a": {"b": 1, "0": "zero", "x y": "spaced"}, "b": [1, 2, 3]},
    {"a": [{"b": 1}, {"b": [1, 2]}, 3, None, "str", [{"b": 2}], {}], "b": {"a": None}},
    {"a": "string", "b": 5},
    {"a": None, "b": None},
    {"a": [], "b": {}},
    {"a": {}, "b": ""},
    {},
    {"a": {"a": {"a": {"b": "deep"}}, "b": {"b": {"b": 0}}}},
    {"a": [[1, 2], [3, [4, 5]], []], "b": [[{"a": 1}]]},
    {"a": [None, None], "b": [False, True, 0]},
    {"a": {"b": [{"a": [1, 2]}, {"a": {"b": 9}}]}, "x y": {"a": 1}},
    {"a": 0, "b": False, "0": {"a": "zero-key"}},
    {"a": [1, 2, 3, 4, 5, 6], "b": ["s", "t"]},
    [{"a": 1}, [{"a": 2}], "x", None, {"b": {"a": 3}}],
    [],
    "abc",
    "",
    0,
    12.5,
    None,
    True,
    VENDOR_EVENT,
]

SEGMENTS = [
    ".a", ".b", ".missing", ".0", "['a']", '["b"]', "['x y']", "['a','b']", "[0]", "[1]",
    "[-1]", "[-2]", "[5]", "[-7]", "[0,1]", "[-1,0]", "[*]", ".*", "[1:]", "[:2]",
    "[::2]", "[-2:]", "[::0]", "[:]",
]


@functools.cache
def parsed(expr: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jsonpath_ng.ext.parse(expr)


def reference(expr: str, data):
    """What jsonpath-ng itself finds."""
    return [m.value for m in parsed(expr).find(data)]


def plain_expressions():
    yield "$"
    for depth in (1, 2):
        for combo in itertools.product(SEGMENTS, repeat=depth):
            yield "$" + "".join(combo)
    # Three levels with the segments that reach furthest into DATA.
    deep = [".a", ".b", "[0]", "[-1]", "[*]", "['a','b']", "[1:]"]
    for combo in itertools.product(deep, repeat=3):
        yield "$" + "".join(combo)


VENDOR_PATHS = [
    "$.srcip[0]", "$.dstip[0]", "$.srcip[-1]", "$.metrics.bits.max", "$.metrics.count.flow",
    "$.tags[*]", "$.tags[1:]", "$.track_by[-1]", "$.ipinfo[*].ip", "$.ipinfo[*].asn",
    "$.ipinfo[0].ip", "$['severity']", '$["customer"]', "$.metrics['bits']['avg']",
    "$.metrics.*.max", "$.rules", "$.rules[0]", "$.categories[0]", "$.nothing.here",
]


# Older jsonpath-ng releases (no Wildcard class) spelled wildcards in a way that
# always runs through jsonpath-ng itself.
WILDCARDS_ARE_FAST = hasattr(jsonpath_ng.jsonpath, "Wildcard")

# jsonpath-ng before 1.16 (the newest on Python 3.10 is older) disagrees with later
# releases on edge cases; nwpipe notices and runs every path through it, so there is no
# fast path to compare and these tests do not apply.
needs_fast_path = pytest.mark.skipif(
    not jsonpaths._fast_path_agrees(),
    reason="the installed jsonpath-ng predates the fast path's semantics; nwpipe falls back")


@needs_fast_path
def test_fast_path_is_active_with_the_installed_jsonpath_ng():
    # Otherwise every equivalence below would only compare jsonpath-ng with itself.
    assert jsonpaths._fast_path_agrees()


def parses(expr: str) -> bool:
    try:
        parsed(expr)
    except Exception:
        return False
    return True


@needs_fast_path
@pytest.mark.parametrize("expr", list(plain_expressions()))
def test_plain_paths_match_jsonpath_ng(expr):
    if not parses(expr):
        # A few combinations are not valid jsonpath-ng ("$.0.0" reads as a float).
        with pytest.raises(ValueError):
            compile_path(expr)
        return
    function = compile_path(expr)
    if WILDCARDS_ARE_FAST or not any(c in expr for c in "*:"):
        assert function.fast, f"{expr} should take the fast path"
    for data in DATA:
        before = copy.deepcopy(data)
        expected = reference(expr, data)
        assert function(data) == expected, (expr, data)
        if function.one is not None:  # the list-free variant for singular paths
            assert [function.one(data)] == (expected or [MISSING]), (expr, data)
        assert data == before  # never modifies the data


@pytest.mark.parametrize("expr", VENDOR_PATHS)
def test_vendor_paths_match_jsonpath_ng(expr):
    function = compile_path(expr)
    assert function.fast or not WILDCARDS_ARE_FAST
    for data in DATA:
        assert function(data) == reference(expr, data)


@needs_fast_path
def test_one_is_there_only_for_singular_paths():
    assert compile_path("$.a[0].b['c'][-1]").one is not None
    for expr in ("$.a[*]", "$.a[0,1]", "$['a','b']", "$.a[1:]", "$..a", "$.a[?(@.b)]"):
        assert compile_path(expr).one is None
    assert compile_path("$.a").one({"b": 1}) is MISSING


def test_results_are_the_values_themselves_not_copies():
    data = {"a": {"b": {"c": 1}}}
    assert compile_path("$.a.b")(data)[0] is data["a"]["b"]


def test_examples():
    assert compile_path("$.srcip[0]")(VENDOR_EVENT) == ["1.2.3.4"]
    assert compile_path("$.tags[-1]")(VENDOR_EVENT) == ["tag3"]
    assert compile_path("$.tags[9]")(VENDOR_EVENT) == []
    assert compile_path("$.ipinfo[*].ip")(VENDOR_EVENT) == ["1.2.3.4", "7.8.9.10"]
    assert compile_path("$")(VENDOR_EVENT) == [VENDOR_EVENT]
    assert compile_path("$.rules")(VENDOR_EVENT) == [None]  # a null is a match


@pytest.mark.parametrize("expr", [
    "$.ipinfo[?(@.asn > 1000)].ip",
    "$.ipinfo[?(@.asn > 1000 && @.ip == '1.2.3.4')]",
    "$..max",
    "$..[0]",
    "$.tags.`len`",
    "$.metrics.`keys`",
    "$.ipinfo[?(@.asn < 10)]",
    "$.a.$",
    "$.a.`this`",
    "$.ipinfo[\\ip]",
    "$.cachekey.`split(' ', 0, -1)`",
    "$.a..b",
    "$[?(@.a)]",
])
def test_other_expressions_run_through_jsonpath_ng(expr):
    if not parses(expr):
        pytest.skip("the installed jsonpath-ng does not know this syntax")
    function = compile_path(expr)
    assert not function.fast
    for data in DATA:
        try:
            expected = reference(expr, data)
        except Exception:
            continue  # jsonpath-ng itself fails on that data; the mapping reports it
        assert function(data) == expected


def test_filter_on_vendor_event():
    function = compile_path("$.ipinfo[?(@.asn > 1000)].ip")
    assert function(VENDOR_EVENT) == ["1.2.3.4"]


def test_relative_paths_work_like_jsonpath_ng():
    assert compile_path("metrics.bits.max")(VENDOR_EVENT) == [0]


@pytest.mark.parametrize("expr", ["$.a[", "$[?(@.a >)]", "$.a..", "$.", "", "   ", "$[1:2:3:4]",
                                  "$.`nonsense`"])
def test_syntax_errors_are_value_errors_with_the_expression(expr):
    with pytest.raises(ValueError) as info:
        compile_path(expr)
    message = str(info.value)
    assert "jsonpath" in message
    if expr.strip():
        assert repr(expr) in message


def test_non_string_is_a_value_error():
    with pytest.raises(ValueError, match="string"):
        compile_path(5)  # type: ignore[arg-type]


def test_falls_back_when_jsonpath_ng_disagrees(monkeypatch):
    # A jsonpath-ng release with other rules: every path then runs through it.
    monkeypatch.setattr(jsonpaths, "_fast_path_agrees", lambda: False)
    function = compile_path("$.a[0]")
    assert not function.fast
    assert function({"a": [7]}) == [7]


@needs_fast_path
def test_expressions_cannot_inject_code():
    # Keys become constants of the generated function, never part of its source.
    expr = "$['\\'); import os; os.system(\\'false\\'); (\\'']"
    function = compile_path(expr)
    assert function.fast
    key = "'); import os; os.system('false'); ('"
    assert function({key: 1}) == [1] == reference(expr, {key: 1})
