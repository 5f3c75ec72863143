"""Micro-benchmark of the mapping engine: jsonpath fast path and whole mappings.

Run: python benchmarks/bench_mapping.py [--events N]

Prints microseconds per event for
- each of 10 plain jsonpaths, compiled (fast path) vs jsonpath-ng's ``find``;
- a mapping of 10 jsonpath fields and one Jinja title (keep = false);
- the same with keep = true plus drop and rename;
- a whole-body JSON template;
- orjson loads + dumps of the event, for scale.
Events are generated in the shape of the vendor's sample webhook body.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonpath_ng.ext  # noqa: E402
import orjson  # noqa: E402

from nwpipe.transform.jsonpaths import compile_path  # noqa: E402
from nwpipe.transform.mapping import compile_mappings  # noqa: E402
from nwpipe.transform.templating import make_environment  # noqa: E402

PATHS = [
    "$.id", "$.alerttype", "$.customer", "$.severity", "$.srcip[0]", "$.dstip[-1]",
    "$.metrics.bits.max", "$.metrics.packets.avg", "$.tags[*]", "$.start",
]

FIELDS = {
    "event_id": "$.id", "state": "$.alerttype", "tenant": "$.customer",
    "severity": "$.severity", "src_ip": "$.srcip[0]", "dst_ip": "$.dstip[-1]",
    "bits_max": "$.metrics.bits.max", "packets_avg": "$.metrics.packets.avg",
    "tags": "$.tags[*]", "start": "$.start",
    "title": "{{ algorithm | upper }} {{ alerttype }} for {{ customer }}",
}

ALGORITHMS = ["knownbotnet", "ddos_dst", "portscan", "dns_tunnel", "ssh_bruteforce"]


def make_event(rng: random.Random, n: int) -> dict:
    def stats() -> dict:
        return {"avg": round(rng.random() * 1e6, 2), "max": rng.randrange(10**7),
                "min": rng.randrange(100), "sum": rng.randrange(10**9)}

    def ip() -> str:
        return ".".join(str(rng.randrange(1, 255)) for _ in range(4))

    start = 1689391131 + n
    return {
        "alerttype": rng.choice(["start", "ongoing", "end"]),
        "algorithm": rng.choice(ALGORITHMS), "beta": False, "bypassdisplay": False,
        "bypassrule": False, "cachekey": f"{ip()} {ip()}", "categories": ["iprep"],
        "customer": rng.choice(["acme", "globex", "initech"]),
        "description": "Srcip reputation is a known botnet", "dstinternal": "",
        "dstip": [ip() for _ in range(rng.randrange(1, 4))], "duration": rng.randrange(900),
        "end": 0, "factorcount": "", "factors": "", "flowsrcname": "",
        "id": f"00edee24-bc66-4b37-803c-{n:012d}", "ignore": False, "input": "",
        "ipinfo": [], "ipinfocount": 0, "lasttimestamp": start,
        "metrics": {"bits": stats(), "bitsxrate": stats(), "clockahead": stats(),
                    "clockbehind": stats(), "count": {"flow": rng.randrange(1, 100)},
                    "duration": stats(), "hasclock": False, "packets": stats(),
                    "packetsxrate": stats()},
        "name": "", "output": "", "rollupperiod": 300, "rulecount": 0, "rules": None,
        "severity": rng.choice(["low", "medium", "high"]), "site": "", "srcinternal": "",
        "srcip": [ip() for _ in range(rng.randrange(1, 4))], "start": start,
        "summary": "Knownbotnet alert has started in <location> for device <devicename>",
        "tag": "", "tags": ["tag1", "tag2", "tag3"], "threshold": "count(track_by) >= 1",
        "timestamp": start, "track": "srcip dstip", "track_by": ["srcip", "dstip"],
        "updatecount": 1, "updateinterval": 300,
    }


def per_event(label: str, function, events: list, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for event in events:
            function(event)
        best = min(best, time.perf_counter() - t0)
    micros = best / len(events) * 1e6
    print(f"{label:<58} {micros:8.2f} µs/event")
    return micros


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    rng = random.Random(42)
    events = [make_event(rng, n) for n in range(args.events)]
    print(f"{len(events)} events, {len(orjson.dumps(events[0]))} bytes each\n")

    fast = [compile_path(p) for p in PATHS]
    assert all(f.fast for f in fast)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = [jsonpath_ng.ext.parse(p) for p in PATHS]
    for f, s in zip(fast, slow):
        assert f(events[0]) == [m.value for m in s.find(events[0])]

    def all_fast(event):
        for f in fast:
            f(event)

    def all_slow(event):
        for s in slow:
            [m.value for m in s.find(event)]

    print("jsonpath, 10 plain paths per event")
    f_us = per_event("  nwpipe compile_path (fast path)", all_fast, events)
    s_us = per_event("  jsonpath-ng parse(...).find", all_slow, events)
    print(f"  -> {s_us / f_us:.1f}x faster, {f_us / 10:.2f} µs vs {s_us / 10:.2f} µs per path\n")

    env = make_environment()
    mappings = compile_mappings({
        "siem": {"keep": False, "fields": FIELDS},
        "paths": {"keep": False, "fields": {k: v for k, v in FIELDS.items() if k != "title"}},
        "title": {"keep": False, "fields": {"title": FIELDS["title"]}},
        "keep": {"drop": ["beta", "bypassdisplay", "metrics.clockahead"],
                 "rename": {"alerttype": "state", "id": "event_id"},
                 "fields": {"title": FIELDS["title"], "src_ip": "$.srcip[0]"}},
        "body": {"body": '{"text": {{ algorithm | upper ~ " " ~ alerttype ~ " for " ~ '
                         'customer }}, "severity": {{ severity }}, "src": {{ srcip }}, '
                         '"start": {{ start | isotime }}}'},
    }, env)
    print("mappings")
    per_event("  10 jsonpath fields + 1 Jinja title (keep = false)", mappings["siem"].apply,
              events)
    per_event("  10 jsonpath fields only", mappings["paths"].apply, events)
    per_event("  1 Jinja title only", mappings["title"].apply, events)
    per_event("  keep + drop 3 + rename 2 + title + 1 path", mappings["keep"].apply, events)
    per_event("  JSON body template (4 values)", mappings["body"].apply, events)
    print("\nfor scale")
    per_event("  orjson loads + dumps of the event", lambda e: orjson.loads(orjson.dumps(e)),
              events)


if __name__ == "__main__":
    main()
