"""Route and map one event: the single place that decides what each output receives.

``nwpipe run``, ``render``, ``test``, ``replay`` and ``check --probe`` all call
:func:`route_and_map` (or :func:`map_for`, for a delivery to a chosen output), and differ
only in what they do with the outcomes: submit them, print them, compare them. So the
body ``render`` shows is the body ``run`` sends, by construction. ``run`` takes a chunk
of events at a time (:func:`route_and_map_many`), which gives the same outcomes.

An outcome per output is one of:

- a :class:`~nwpipe.outputs.Delivery`: the output takes the event; ``body`` is mapped
  and already serialised once (``body_json()``), so a body JSON cannot hold fails here;
- :class:`MapFailed`: the event cannot go there; ``reason`` is what the dead-letter file
  records. ``stage`` is ``"parse"`` for an event without a usable ``id``/``customer``
  (it reaches no output), and a failed ``when`` also stops the whole event
  (``whole_event``);
- :class:`NotRouted`: the output does not take the event (its ``customers``, its
  ``when``, or its mapping table has no entry for the customer); nothing is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

import orjson

from nwpipe import jsonio
from nwpipe.errors import EventError
from nwpipe.outputs import Delivery
from nwpipe.transform.routing import Route

if TYPE_CHECKING:  # pragma: no cover
    from nwpipe.sources.decode import Event

__all__ = ["MapFailed", "NotRouted", "Outcome", "check_event", "route_and_map",
           "route_and_map_many", "map_for"]


@dataclass(frozen=True, slots=True)
class MapFailed:
    """An event that cannot be delivered to ``output`` (None: to any output), and why."""

    output: str | None
    mapping: str | None
    reason: str
    #: "parse": not an event nwpipe can route; "map": its ``when`` or mapping failed
    stage: str = "map"
    #: a ``when`` failed: the event reaches no output at all (``output`` names the culprit)
    whole_event: bool = False


@dataclass(frozen=True, slots=True)
class NotRouted:
    """An output (None: every output) that does not take the event, and why."""

    output: str | None
    reason: str


Outcome = Union[Delivery, MapFailed, NotRouted]


def check_event(event: dict) -> str | None:
    """Why an event cannot be routed (no usable ``id`` or ``customer``), or None."""
    if not isinstance(event, dict):  # a source plugin's mistake, reported like bad input
        return f"an event must be a JSON object, not {type(event).__name__}"
    for name in ("id", "customer"):
        value = event.get(name)
        if value is None:
            return f"event has no '{name}' field"
        if not isinstance(value, str) or not value:
            return f"event field '{name}' must be a non-empty string"
    return None


def route_and_map(event: dict, routes: Sequence[Route], source: str = "<event>", line: int = 0,
                  *, delivery_id: str | None = None,
                  attempts: list | None = None) -> list[Outcome]:
    """The outcome of ``event`` for each of ``routes`` that takes it, in route order.

    When no route takes the event the result is one :class:`NotRouted` saying why.
    ``delivery_id`` and ``attempts`` carry over from a dead-letter record (replay).
    """
    problem = check_event(event)
    if problem:
        return [MapFailed(None, None, problem, stage="parse")]
    matched = []
    for route in routes:
        try:
            if route.matches(event):
                matched.append(route)
        except EventError as exc:
            # One failing `when` stops the whole event: it reaches no output.
            return [MapFailed(route.name, None, f"'when' failed: {exc}", whole_event=True)]
    if not matched:
        return [NotRouted(routes[0].name if len(routes) == 1 else None,
                          _why_not_taken(event, routes))]
    # the delivery id is worked out when something needs it (see Delivery.id)
    outcomes: list[Outcome] = []
    for route in matched:
        outcomes.append(_map(route, event, source, line, delivery_id, attempts, routed=True))
    return outcomes


def route_and_map_many(records: Sequence[Event], routes: Sequence[Route]
                       ) -> list[Delivery | list[Outcome]]:
    """:func:`route_and_map` for a chunk of decoded events (``nwpipe run``'s hot path).

    ``records`` are :class:`~nwpipe.sources.decode.Event` s (``data``, ``source``,
    ``line``). Per record, in order: its one :class:`~nwpipe.outputs.Delivery` when that
    is the whole outcome (the common case), else its list of outcomes. With one output and no
    ``when``, an ordinary event is mapped without the general routing steps.
    """
    out: list[Delivery | list[Outcome]] = []
    append = out.append
    # one output and no `when`: an ordinary event needs no general routing
    fast = routes[0] if len(routes) == 1 and routes[0].condition is None else None
    customers = fast.customers if fast is not None else None
    for record in records:
        event = record.data
        if fast is not None and event.__class__ is dict:
            alert = event.get("id")
            customer = event.get("customer")
            if (alert.__class__ is str and alert and customer.__class__ is str and customer
                    and (customers is None or customer in customers)):
                outcome = _map(fast, event, record.source, record.line, None, None, True)
                append(outcome if type(outcome) is Delivery else [outcome])
                continue
        # anything else (or a problem to name) takes the general path, with its messages
        outcomes = route_and_map(event, routes, record.source, record.line)
        append(outcomes[0] if len(outcomes) == 1 and type(outcomes[0]) is Delivery
               else outcomes)
    return out


def map_for(route: Route, event: dict, source: str = "<event>", line: int = 0, *,
            delivery_id: str | None = None, attempts: list | None = None) -> Delivery | MapFailed:
    """Map ``event`` for ``route``'s output without asking its filters (replay, probe)."""
    problem = check_event(event)
    if problem:
        return MapFailed(None, None, problem, stage="parse")
    result = _map(route, event, source, line, delivery_id, attempts, routed=False)
    assert not isinstance(result, NotRouted)  # only a routed event can be "not taken"
    return result


def _map(route: Route, event: dict, source: str, line: int, did: str | None,
         attempts: list | None, routed: bool) -> Outcome:
    customer = event.get("customer")
    mapper = route.mapper(customer)
    if mapper is None:
        if routed:  # the output maps some customers only, and not this one
            return NotRouted(route.name, f"its mapping table has no entry for customer "
                                         f"{customer!r} and no default")
        return MapFailed(route.name, None,
                         f"output '{route.name}' has no mapping for customer {customer!r}")
    try:
        body = mapper(event)
        try:
            data = orjson.dumps(body)
        except TypeError:  # beyond orjson (an integer past 64 bits): jsonio, or no JSON
            data = jsonio.dumps(body)
    except EventError as exc:
        name = route.mapping_name(customer)
        return MapFailed(route.name, name, f"mapping '{name}' failed: {exc}")
    except TypeError as exc:  # orjson.JSONEncodeError
        name = route.mapping_name(customer)
        return MapFailed(route.name, name,
                         f"mapping '{name}' made a body that is not valid JSON: {exc}")
    # Serialised above, once (the output reuses it): a body JSON cannot hold fails this
    # event for this output, not a worker. A replay keeps the history of attempts.
    return Delivery(did, body, event, route.output.name, source, line,
                    list(attempts) if attempts else None, data)


def _why_not_taken(event: dict, routes: Sequence[Route]) -> str:
    if not routes:
        return "no output is configured"
    if len(routes) > 1:
        return "no output takes this event (their customers or when do not match)"
    route = routes[0]
    if route.customers is not None and event.get("customer") not in route.customers:
        return (f"customer {event.get('customer')!r} is not in its customers "
                f"{sorted(route.customers)}")
    return f"its when is false: {route.output.when}"
