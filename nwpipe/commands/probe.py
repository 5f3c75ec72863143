"""``nwpipe check --probe``: send one test event to each output that can be probed and
say, in plain words, whether it arrived and why not.

Probing belongs to the output: an output that talks to a receiver implements
``async def probe(self, delivery)`` (see :class:`nwpipe.outputs.Output`); this command
builds the test event, maps it with the one route-and-map function, and hands the
delivery to each output's ``probe``. Outputs without one are listed as "not probed".

The test event has the shape of a real Netography event, so a receiver that validates
what it gets accepts it, and is marked as a test everywhere a person looks:

- ``id`` is ``nwpipe-probe-<random>`` and the delivery id (the ``webhook-id`` and
  ``Idempotency-Key`` headers) ``nwp_probe_<random>``: new on every probe, so a
  receiver that deduplicates never drops it and it never collides with a real alert;
- ``alerttype`` is ``end``, so tools that open something when an alert starts do not
  (the PagerDuty template resolves, which opens no incident);
- ``algorithm`` is ``nwpipe_probe``, ``severity`` ``low``, the summary says it is a
  connectivity test, addresses are documentation addresses (192.0.2.1, 198.51.100.1).

It is mapped as configured for the output (customer: the first of the output's
``customers``, else the first customer of its mapping table, else ``nwpipe-probe``),
sent once, without retries and whatever the output's ``when`` says.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Iterable

from nwpipe.net.httputil import printable
from nwpipe.outputs import Delivery, Output
from nwpipe.transform.route_map import MapFailed, map_for
from nwpipe.transform.routing import Route

__all__ = ["ProbeReport", "probe_event", "probe_output", "probe_outputs", "run_probes"]

PROBE_CUSTOMER = "nwpipe-probe"


@dataclass
class ProbeReport:
    """How one output answered the test event."""

    output: str
    ok: bool
    message: str
    status: int | None = None
    elapsed: float | None = None
    probed: bool = True

    def line(self) -> str:
        """``soc: OK (HTTP 200 in 35 ms)``; an output's message may quote its receiver,
        so control characters never reach the terminal."""
        return f"{self.output}: {printable(self.message)}"


def probe_event(customer: str = PROBE_CUSTOMER, now: float | None = None) -> dict:
    """A test event shaped like the vendor's, clearly marked as a test."""
    now = int(time.time() if now is None else now)
    summary = "nwpipe connectivity test (nwpipe check --probe); not a real alert"
    return {
        "alerttype": "end", "algorithm": "nwpipe_probe", "beta": False,
        "bypassdisplay": False, "bypassrule": False, "cachekey": "192.0.2.1 198.51.100.1",
        "categories": ["test"], "customer": customer,
        "description": summary, "dstinternal": "", "dstip": ["198.51.100.1"],
        "duration": 0, "end": now, "factorcount": "", "factors": "", "flowsrcname": "",
        "id": f"nwpipe-probe-{uuid.uuid4()}", "ignore": False, "input": "", "ipinfo": [],
        "ipinfocount": 0, "lasttimestamp": now,
        "metrics": {"bits": {"avg": 0.0, "max": 0, "min": 0, "sum": 0},
                    "count": {"flow": 0}},
        "name": "", "output": "", "rollupperiod": 300, "rulecount": 0, "rules": None,
        "severity": "low", "site": "", "srcinternal": "", "srcip": ["192.0.2.1"],
        "start": now, "summary": summary, "tag": "", "tags": ["nwpipe-probe"],
        "threshold": "", "timestamp": now, "track": "srcip dstip",
        "track_by": ["srcip", "dstip"], "updatecount": 1, "updateinterval": 300,
    }


def _customer_for(route: Route) -> str:
    """A customer this output takes and has a mapping for."""
    output = route.output
    table = output.mapping if isinstance(output.mapping, dict) else {}
    candidates: Iterable[str] = sorted(output.customers) if output.customers else ()
    for customer in candidates:
        if route.mapper(customer) is not None:
            return customer
    if route.default_mapping is None:
        for customer in table:
            if customer != "default":
                return customer
    return next(iter(candidates), PROBE_CUSTOMER)


def can_probe(output: Output) -> bool:
    """True when the output's class implements ``probe``."""
    return type(output).probe is not Output.probe


async def probe_output(route: Route, output: Output, *, now: float | None = None) -> ProbeReport:
    """Map the test event for ``route``'s output and let the output probe its receiver."""
    name = route.name
    event = probe_event(_customer_for(route), now)
    did = f"nwp_probe_{uuid.uuid4().hex}"
    mapped = map_for(route, event, "<probe>", delivery_id=did)
    if isinstance(mapped, MapFailed):
        if route.mapper(event["customer"]) is None:
            # its mapping table maps no customer it takes: the event goes as it is
            mapped = Delivery(did, event, event, name, "<probe>")
        else:
            reason = mapped.reason.split(" failed: ", 1)[-1]
            return ProbeReport(name, False, f"the mapping failed on the test event: {reason}")
    try:
        result = await output.probe(mapped)
    except Exception as exc:  # noqa: BLE001 - a plugin's bug is one line of the report
        return ProbeReport(name, False, f"the probe failed: {type(exc).__name__}: {exc}")
    return ProbeReport(name, result.ok, result.message, result.status, result.elapsed)


async def probe_outputs(config, router, *, now: float | None = None) -> list[ProbeReport]:
    """Probe every output that can be probed, all at once; the others are reported as
    not probed. Results come in the order of the config."""
    async def one(route: Route) -> ProbeReport:
        output = route.output.create()
        if not can_probe(output):
            return ProbeReport(route.name, True, f"not probed ({route.output.type} output)",
                               probed=False)
        return await probe_output(route, output, now=now)

    return list(await asyncio.gather(*(one(route) for route in router.routes)))


def run_probes(config, router) -> list[ProbeReport]:
    """:func:`probe_outputs` in a fresh event loop (for the command line)."""
    return asyncio.run(probe_outputs(config, router))
