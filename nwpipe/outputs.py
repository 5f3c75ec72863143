"""The output contract: what an output plugin implements and what it reports.

An output *sends once* and says how it went. Retries, backoff, ordering per alert,
batching, rate limits and the dead-letter file belong to the delivery engine
(``nwpipe.engine.delivery``), so every output, a user's plugin too, gets them for free.

A minimal output::

    from nwpipe import Output, Setting, Delivered, Retry, Failed, hookimpl

    class Echo(Output):
        settings = {"prefix": Setting(str, default="")}

        async def send(self, batch):
            for delivery in batch:
                print(self.config["prefix"], delivery.body_json().decode())
            return Delivered()

    @hookimpl
    def register_outputs(register):
        register("echo", Echo)
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from typing import Any, ClassVar, Union

import orjson

from nwpipe import jsonio
from nwpipe.settings import Setting


@dataclass(frozen=True, slots=True)
class Delivered:
    """Every delivery in the batch arrived, except those listed in ``refused``.

    ``refused`` holds ``(index in the batch, reason)`` pairs for deliveries that failed
    for good while the rest arrived (a message too large for the receiver): those go to
    the dead-letter file with their reason and are not sent again.
    """

    refused: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Retry:
    """A temporary failure: the engine tries again, after ``after`` seconds if given."""

    reason: str
    after: float | None = None
    status: int | None = None
    response: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure: no retry; the batch goes to the dead-letter file."""

    reason: str
    status: int | None = None
    response: str | None = None


Result = Union[Delivered, Retry, Failed]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """How a receiver answered ``nwpipe check --probe``'s test delivery.

    ``message`` says it in plain words for the user: ``OK (HTTP 200 in 35 ms)``,
    ``connection refused: nothing listens on 10.0.0.5:514``, with what to change.
    """

    ok: bool
    message: str
    status: int | None = None
    elapsed: float | None = None


class Delivery:
    """One mapped event on its way to one output.

    ``body`` is the mapped event (a JSON value), ``event`` the original event as read.
    ``id`` is stable for the same event across retries and replays (built from the
    event's ``id``, ``alerttype`` and ``updatecount``), so receivers can deduplicate.
    Given as None it is worked out on first use: most deliveries travel in batches and
    never need their own (only a single send and a dead-letter record do).
    """

    # A plain class with slots, not a dataclass: one is made per event and output, and
    # the hot path only sets what it has (no attempts list, no id until asked for).
    __slots__ = ("_id", "body", "event", "output", "source", "line", "_attempts", "_json",
                 "ticket")

    def __init__(self, id: str | None, body: Any, event: dict, output: str,
                 source: str = "<input>", line: int = 0, attempts: list | None = None,
                 _json: bytes | None = None, ticket: Any = None):
        self._id = id
        self.body = body
        self.event = event
        self.output = output
        self.source = source
        self.line = line
        self._attempts = attempts
        self._json = _json
        #: the pipeline's record of the event this delivery came from, handed back when
        #: the delivery is settled: the source's acknowledgement, or (shard, position)
        #: when the event came from the durable queue
        self.ticket = ticket

    @property
    def id(self) -> str:
        """The delivery id (see the class docstring), computed once when first asked for."""
        did = self._id
        if did is None:
            did = self._id = delivery_id(self.event)
        return did

    @id.setter
    def id(self, value: str) -> None:
        self._id = value

    @property
    def seed(self) -> str:
        """What the id is made from, without hashing: the event's ``id``, ``alerttype``
        and ``updatecount`` (a batch id hashes these). An id nwpipe made (``nwp_...``,
        worked out here or carried over by a replay) stands for exactly that; any other
        given id stands for itself."""
        if self._id is not None and not self._id.startswith("nwp_"):
            return self._id
        return id_seed(self.event)

    @property
    def attempts(self) -> list:
        """The attempts so far (dicts, as the dead-letter record shows them)."""
        attempts = self._attempts
        if attempts is None:
            attempts = self._attempts = []
        return attempts

    @attempts.setter
    def attempts(self, value: list) -> None:
        self._attempts = value

    @property
    def key(self) -> str:
        """Deliveries with the same key reach the output in input order (the alert id)."""
        value = self.event.get("id")
        return value if isinstance(value, str) else repr(value)

    def body_json(self) -> bytes:
        """The body serialised as compact JSON (computed once)."""
        data = self._json
        if data is None:
            try:
                data = orjson.dumps(self.body)
            except TypeError:
                # jsonio keeps integers beyond 64 bits exact, where orjson alone fails
                data = jsonio.dumps(self.body)
            self._json = data
        return data

    def __repr__(self) -> str:
        return (f"Delivery(id={self._id!r}, output={self.output!r}, source={self.source!r}, "
                f"line={self.line!r})")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Delivery:
            return NotImplemented
        assert isinstance(other, Delivery)
        return (self.id, self.body, self.event, self.output, self.source, self.line,
                self.attempts, self.ticket) == (other.id, other.body, other.event, other.output,
                                                other.source, other.line, other.attempts,
                                                other.ticket)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was


class Output:
    """Base class for outputs.

    Subclasses declare ``settings`` (their own config keys) and implement ``send``.
    ``config`` holds the validated settings with defaults filled in and ``${ENV}``
    secrets already expanded. ``name`` is the output's name from ``[outputs.NAME]``.

    Class attributes tune how the engine drives the output by default; the user may
    override them per output with ``concurrency`` and ``batch``.
    """

    settings: ClassVar[dict[str, Setting]] = {}
    #: deliveries in flight at once (per-alert order is kept regardless); the instance
    #: made for a run holds the configured value
    concurrency: int = 1
    #: largest batch handed to one ``send`` by default (1 = one event per call)
    batch_max_events: ClassVar[int] = 1
    #: seconds a partial batch waits for more events by default (0: send what is ready)
    batch_max_wait: ClassVar[float] = 0.0

    def __init__(self, name: str, config: dict[str, Any]):
        self.name = name
        self.config = config

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Cross-setting checks after validation; raise ``ValueError`` with a message.

        Runs when the config loads, before any event is read.
        """

    async def open(self) -> None:
        """Acquire resources (sessions, files). Called once before the first send."""

    async def send(self, batch: list[Delivery]) -> Result:
        """Send ``batch`` once and report ``Delivered()``, ``Retry(...)`` or ``Failed(...)``.

        Raising an exception counts as ``Retry`` for ``OSError`` and ``TimeoutError``
        and as ``Failed`` for anything else, with the exception as the reason.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Release resources. Called once after the last send."""

    def describe(self) -> str:
        """A one-line description for ``nwpipe check`` (never include secrets)."""
        return type(self).__name__

    async def probe(self, delivery: Delivery) -> ProbeResult:
        """Optional, for outputs that talk to a receiver: ``nwpipe check --probe`` calls it
        on a new, unopened instance with one mapped test delivery. Open, send it once (no
        retries), close, and say how it went (:mod:`nwpipe.probing` has the helpers).
        An output that does not implement it is listed as "not probed"."""
        raise NotImplementedError


class OutputClosed(Exception):
    """Raised by ``send`` when the destination is gone for good on purpose (the reader
    of standard output went away): the run stops reading quietly, like a Unix filter."""


def delivery_id(event: dict) -> str:
    """A stable id for one state change of one alert: the same across retries and replays.

    Built from the event's ``id``, ``alerttype`` and ``updatecount``; hashed so that it is
    always a safe header value whatever the event contains.
    """
    return "nwp_" + sha256(id_seed(event).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def id_seed(event: dict) -> str:
    """The text a delivery id hashes: the event's ``id``, ``alerttype``, ``updatecount``."""
    return f"{event.get('id')}\x1f{event.get('alerttype')}\x1f{event.get('updatecount')}"
