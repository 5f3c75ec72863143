"""asyncio helpers that keep a cancel a cancel.

On Python 3.10 and 3.11, ``asyncio.wait_for`` loses a cancel that arrives in the same
loop iteration as the awaited operation ends: it returns the operation's result, or
raises its error (a refused connection), instead of ``CancelledError``. A delivery
worker stopped that way goes on to wait for its next event, and whoever waits for it
to end waits forever. :func:`within` bounds an await without that flaw, and
:func:`cancel_and_wait` stops tasks even when one of them (a plugin's code) swallows a
cancel.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Awaitable, Iterable, TypeVar

log = logging.getLogger("nwpipe")

T = TypeVar("T")

#: seconds between cancels of a task that went on after being cancelled
CANCEL_AGAIN = 0.5


async def within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``await awaitable``, raising ``asyncio.TimeoutError`` after ``timeout`` seconds
    (None: no limit). Unlike ``asyncio.wait_for`` on Python 3.10/3.11, a cancel of the
    caller always ends in ``CancelledError``, even when the awaitable finishes at the
    same moment."""
    if timeout is None:
        return await awaitable
    if sys.version_info >= (3, 11):
        # asyncio.timeout tells its own cancel from anyone else's (Task.uncancel)
        async with asyncio.timeout(max(0.0, timeout)):
            return await awaitable
    return await _within_310(awaitable, timeout)  # pragma: no cover - Python 3.10


async def _within_310(awaitable: Awaitable[T], timeout: float) -> T:  # pragma: no cover
    """Python 3.10: the same with a timer that cancels the awaiting task."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(max(0.0, timeout), expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError() from None
        raise
    finally:
        timer.cancel()


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel ``tasks`` and return once every one has ended.

    A task that swallows its cancel (a library that catches ``CancelledError``, or
    ``asyncio.wait_for`` on Python 3.10/3.11) and goes on to wait for something else is
    cancelled again every ``CANCEL_AGAIN`` seconds, so this cannot wait forever.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN)
        if pending:
            log.debug("%s went on after a cancel; cancelled again",
                      ", ".join(sorted(task.get_name() for task in pending)))
    # retrieve what they ended with, so asyncio does not report it as never retrieved
    await asyncio.gather(*tasks, return_exceptions=True)
