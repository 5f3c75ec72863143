"""Generate events shaped like Netography Fusion's webhook sample (for examples and benchmarks).

    python benchmarks/events.py 100000 > /tmp/events.jsonl
"""

from __future__ import annotations

import json
import random
import sys
import uuid

ALGORITHMS = [
    ("knownbotnet", ["iprep"], "Srcip reputation is a known botnet"),
    ("ddos_udp_flood", ["ddos"], "UDP flood towards a protected host"),
    ("portscan", ["recon"], "Horizontal port scan from one source"),
    ("dns_amplification", ["ddos"], "DNS amplification attack"),
    ("ssh_bruteforce", ["auth"], "Repeated SSH logins from one source"),
    ("tor_exit", ["iprep"], "Traffic with a Tor exit node"),
]
CUSTOMERS = ["acme", "globex", "initech", "umbrella"]
SEVERITIES = ["low", "medium", "high", "critical"]


def _metric(rng, scale):
    values = [rng.randint(0, scale) for _ in range(3)]
    return {"avg": round(sum(values) / 3, 2), "max": max(values), "min": min(values),
            "sum": sum(values)}


def event(rng: random.Random, alert_id: str, alerttype: str, updatecount: int, start: int,
          algorithm, customer: str, severity: str) -> dict:
    name, categories, description = algorithm
    now = start + 300 * (updatecount - 1)
    src = [f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
           for _ in range(rng.randint(1, 3))]
    dst = [f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
           for _ in range(rng.randint(0, 2))]
    return {
        "alerttype": alerttype, "algorithm": name, "beta": False, "bypassdisplay": False,
        "bypassrule": False, "cachekey": " ".join(src + dst), "categories": categories,
        "customer": customer, "description": description, "dstinternal": "",
        "dstip": dst, "duration": now - start, "end": now if alerttype == "end" else 0,
        "factorcount": "", "factors": "", "flowsrcname": "", "id": alert_id,
        "ignore": False, "input": "", "ipinfo": [], "ipinfocount": 0, "lasttimestamp": now,
        "metrics": {
            "bits": _metric(rng, 10**9), "bitsxrate": _metric(rng, 10**7),
            "clockahead": _metric(rng, 5), "clockbehind": _metric(rng, 5),
            "count": {"flow": rng.randint(1, 5000)},
            "duration": _metric(rng, 600), "hasclock": False,
            "packets": _metric(rng, 10**6), "packetsxrate": _metric(rng, 10**4),
        },
        "name": "", "output": "", "rollupperiod": 300, "rulecount": 0, "rules": None,
        "severity": severity, "site": rng.choice(["", "dc1", "dc2"]),
        "srcinternal": "", "srcip": src, "start": start,
        "summary": f"{name.capitalize()} alert has {alerttype if alerttype != 'start' else 'started'}"
                   f" in {rng.choice(['us-east', 'eu-west', 'ap-south'])} for device edge-{rng.randint(1, 9)}",
        "tag": "", "tags": rng.sample(["tag1", "tag2", "tag3", "edge", "prod"], 2),
        "threshold": "count(track_by) >= 1", "timestamp": now, "track": "srcip dstip",
        "track_by": ["srcip", "dstip"], "updatecount": updatecount, "updateinterval": 300,
    }


def generate(count: int, seed: int = 7):
    """Yield ``count`` events: alerts that start, go on for a while and end, interleaved."""
    rng = random.Random(seed)
    active: list[list] = []
    produced = 0
    clock = 1_689_391_131
    while produced < count:
        if not active or (len(active) < 50 and rng.random() < 0.4):
            active.append([str(uuid.UUID(int=rng.getrandbits(128), version=4)), 0, clock,
                           rng.choice(ALGORITHMS), rng.choice(CUSTOMERS), rng.choice(SEVERITIES),
                           rng.randint(1, 4)])
        alert = rng.choice(active)
        alert[1] += 1
        clock += rng.randint(1, 30)
        if alert[1] == 1:
            kind = "start"
        elif alert[1] >= alert[6] or count - produced <= len(active):
            kind = "end"
        else:
            kind = "ongoing"
        yield event(rng, alert[0], kind, alert[1], alert[2], alert[3], alert[4], alert[5])
        produced += 1
        if kind == "end":
            active.remove(alert)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    out = sys.stdout
    for e in generate(n):
        out.write(json.dumps(e, separators=(",", ":")) + "\n")
