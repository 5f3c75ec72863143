"""Prometheus metrics of a running nwpipe (``/metrics`` of ``serve``, ``run --metrics-listen``
and ``work --metrics-listen``).

Counters that the delivery path already keeps (the run summary's figures, each output's
delivered / retried / dead-lettered counts) are read when Prometheus scrapes, not
updated twice per event; the intake's counters and the delivery latency histogram are
updated where they happen. Each :class:`Metrics` has its own registry, so two in one
process (tests) do not collide. The queue's state (per shard with Redis) is read with
``Queue.status()``; a Redis queue's at most once per :data:`STATUS_MAX_AGE` seconds,
so scrapes from several Prometheus servers cost Redis one status read a second.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from nwpipe.queue.base import QueueError, QueueStatus

log = logging.getLogger("nwpipe.metrics")

#: delivery latency buckets (seconds): a fast local receiver up to a long retry series
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0)
#: seconds a queue status stays fresh enough for a scrape (it reads every shard)
STATUS_MAX_AGE = 1.0


class _PipelineCollector:
    """Reads the pipeline's own counters (those the run summary prints) at scrape time."""

    def __init__(self):
        self.result = None  # a RunResult
        self.engines: dict = {}  # output name -> DeliveryEngine
        self.dead_letter = None  # the DeadLetterFile (its count is live; the result's is not)

    def describe(self):
        return []

    def collect(self):
        result = self.result
        if result is not None:
            for name, value, text in (
                    ("nwpipe_events_read", result.read, "input items decoded (events and rejects)"),
                    ("nwpipe_events_rejected", result.rejected,
                     "input items rejected before routing (not JSON, no id/customer, ...)"),
                    ("nwpipe_mapping_failed", result.map_failed,
                     "(event, output) pairs whose mapping or 'when' failed"),
                    ("nwpipe_dead_letters", self.dead_letter.count if self.dead_letter else 0,
                     "records written to the dead-letter file")):
                family = CounterMetricFamily(name, text)
                family.add_metric([], value)
                yield family
        deliveries = CounterMetricFamily(
            "nwpipe_deliveries", "deliveries by output and outcome (retried counts attempts "
            "that will be tried again)", labels=["output", "outcome"])
        requests = CounterMetricFamily("nwpipe_output_requests",
                                       "sends handed to each output (batches and retries)",
                                       labels=["output"])
        for name, engine in self.engines.items():
            stats = engine.stats
            deliveries.add_metric([name, "delivered"], stats.delivered)
            deliveries.add_metric([name, "retried"], stats.retried)
            deliveries.add_metric([name, "dead_lettered"], stats.dead_lettered)
            deliveries.add_metric([name, "not_sent"], stats.not_sent)
            requests.add_metric([name], stats.requests)
        yield deliveries
        yield requests


class _ShardCollector:
    """Per-shard gauges from the last queue status (one series per shard and gauge, so
    the label count is bounded by ``[queue] shards``)."""

    def __init__(self):
        self.status: QueueStatus | None = None
        self.me: str | None = None  # this process's name among the queue's workers

    def describe(self):
        return []

    def collect(self):
        status = self.status
        if status is None:
            return
        now = time.time()
        depth = GaugeMetricFamily("nwpipe_queue_shard_depth", "entries not yet acknowledged "
                                  "in each shard (its stream length with Redis)", labels=["shard"])
        oldest = GaugeMetricFamily("nwpipe_queue_shard_oldest_age_seconds", "age of the oldest "
                                   "unacknowledged entry of each shard, its lag (0 when empty)",
                                   labels=["shard"])
        pending = GaugeMetricFamily("nwpipe_queue_shard_pending", "entries a worker has read "
                                    "and not yet acknowledged, per shard (Redis consumer group)",
                                    labels=["shard"])
        owned = GaugeMetricFamily("nwpipe_queue_shard_owned", "1 when this process holds the "
                                  "shard's lease (delivers it), else 0", labels=["shard"])
        held = GaugeMetricFamily("nwpipe_queue_shards_held", "shards whose lease some live "
                                 "worker holds (fewer than nwpipe_queue_shards: some wait for "
                                 "an owner)")
        count = GaugeMetricFamily("nwpipe_queue_shards", "shards of the queue")
        leased = status.shards and status.shards[0].pending is not None  # Redis
        for shard in status.shards:
            label = [str(shard.shard)]
            depth.add_metric(label, shard.depth)
            oldest.add_metric(label, max(0.0, now - shard.oldest_at) if shard.oldest_at else 0.0)
            if leased:
                pending.add_metric(label, shard.pending or 0)
                owned.add_metric(label, 1 if self.me and shard.owner == self.me else 0)
        count.add_metric([], len(status.shards))
        yield count
        yield depth
        yield oldest
        if leased:
            held.add_metric([], sum(1 for s in status.shards if s.owner))
            yield pending
            yield owned
            yield held
            workers = status.notes.get("workers")
            if workers is not None:
                live = GaugeMetricFamily("nwpipe_queue_workers", "workers with a live "
                                         "heartbeat in the queue")
                live.add_metric([], len(workers.split()))
                yield live


class Metrics:
    """Every metric nwpipe exposes, in one registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("nwpipe_intake_requests", "HTTP requests to the intake by "
                                "answer status", ["status"], registry=r)
        self.received = Counter("nwpipe_intake_events_received", "events (and pieces that "
                                "were not events) found in accepted-for-reading request bodies",
                                registry=r)
        self.accepted = Counter("nwpipe_intake_events_accepted", "events committed to the "
                                "durable queue and acknowledged with a 2xx", registry=r)
        self.refused = Counter("nwpipe_intake_events_refused", "events refused by the intake, "
                               "by reason (dead-lettered with stage 'intake')", ["reason"],
                               registry=r)
        self.latency = Histogram("nwpipe_delivery_latency_seconds", "from an output's first "
                                 "attempt to its receiver's acceptance, retries included",
                                 ["output"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("nwpipe_queue_depth", "events waiting in the durable queue",
                                 registry=r)
        self.queue_bytes = Gauge("nwpipe_queue_bytes", "bytes of events waiting in the "
                                 "durable queue", registry=r)
        self.queue_oldest = Gauge("nwpipe_queue_oldest_age_seconds", "age of the oldest "
                                  "event in the durable queue (0 when empty)", registry=r)
        self._pipeline = _PipelineCollector()
        r.register(self._pipeline)
        self._queue_status: Callable[[], Awaitable] | None = None
        self._shards = _ShardCollector()
        r.register(self._shards)
        self._status_at = float("-inf")  # monotonic time of the last status read
        self._status_max_age = 0.0

    def watch_pipeline(self, result, engines: dict, dead_letter) -> None:
        """Expose a pipeline's counters (``RunResult``, the dead-letter file's count) and
        its engines' per-output counts, and time each engine's deliveries."""
        self._pipeline.result = result
        self._pipeline.engines = engines
        self._pipeline.dead_letter = dead_letter
        for name, engine in engines.items():
            engine.on_delivered = self.latency.labels(name).observe

    def watch_queue(self, status: Callable[[], Awaitable], queue=None) -> None:
        """Fill the queue gauges from ``await status()`` (a QueueStatus, or None while the
        queue is not open) at scrapes. ``queue``: the Queue itself; a shared (Redis) one,
        whose status costs round trips for every shard, is read at most once per
        :data:`STATUS_MAX_AGE` seconds, and its worker name marks the shards this process
        owns (``nwpipe_queue_shard_owned``)."""
        self._queue_status = status
        self._shards.me = getattr(queue, "name", None)
        self._status_max_age = STATUS_MAX_AGE if getattr(queue, "shared", False) else 0.0

    async def _read_queue(self) -> None:
        """Refresh the queue gauges when the last status is older than STATUS_MAX_AGE."""
        if (self._queue_status is None
                or time.monotonic() - self._status_at < self._status_max_age):
            return
        self._status_at = time.monotonic()
        try:
            status = await self._queue_status()
        except QueueError as exc:  # Redis down: the rest of the page still answers
            log.warning("metrics: no queue figures this scrape: %s", exc)
            self._shards.status = None
            return
        self._shards.status = status
        if status is None:
            return
        self.queue_depth.set(status.depth)
        self.queue_bytes.set(status.bytes)
        oldest = status.oldest_at
        self.queue_oldest.set(max(0.0, time.time() - oldest) if oldest else 0.0)

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition format the scraper's ``Accept`` header asks for (Prometheus
        text by default, OpenMetrics when asked) and its content type."""
        await self._read_queue()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
