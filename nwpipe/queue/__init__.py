"""The durable queue: contract in :mod:`nwpipe.queue.base`, engines beside it."""

from __future__ import annotations

from nwpipe.queue.base import (
    Entry,
    OutputBacklog,
    Pos,
    Queue,
    QueueError,
    QueueFull,
    QueueSettings,
    QueueStatus,
    QueueUnavailable,
    ShardStatus,
    public_url,
    shard_of,
)

__all__ = [
    "Entry", "OutputBacklog", "Pos", "Queue", "QueueError", "QueueFull", "QueueSettings",
    "QueueStatus", "QueueUnavailable", "ShardStatus", "public_url", "shard_of", "create_queue",
    "location",
]


def create_queue(settings: QueueSettings) -> Queue:
    """An unopened queue for ``settings``: Redis Streams when ``url`` is set, else SQLite."""
    if settings.url:
        import importlib

        # only when asked: Redis is an optional dependency
        engine: Queue = importlib.import_module("nwpipe.queue.redis").RedisQueue(settings)
        return engine
    from nwpipe.queue.sqlite import SqliteQueue

    return SqliteQueue(settings)


def location(settings: QueueSettings) -> str:
    """Where the queue lives, for messages: the file, or the Redis URL without credentials."""
    return public_url(settings.url) if settings.url else settings.path
