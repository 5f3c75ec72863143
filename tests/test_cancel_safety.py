"""A cancelled task really stops: the cause of `nwpipe run --keep-queue` hanging forever.

On Python 3.10/3.11, ``asyncio.wait_for`` turns a cancel that arrives as the awaited
operation ends into that operation's outcome. The HTTP client connected through it, so
a delivery worker of an output whose port is closed, cancelled by ``--keep-queue`` just
as its connection was refused, took the refusal for a failed attempt and went on to
wait for its next event; the run waited for that worker forever, and SIGTERM could not
end it. These tests force that interleaving instead of hoping for it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time

import pytest
from test_faults import summary_count
from test_queue_faults import (  # noqa: F401 (receivers is a fixture)
    arrivals,
    config,
    dead_letters,
    nwpipe,
    queue_status,
    receivers,
    write_alerts,
)

from nwpipe import Output, Retry
from nwpipe.aio import cancel_and_wait, within
from nwpipe.config import EngineSettings, RetryPolicy
from nwpipe.engine.deadletter import DeadLetterFile, read_records
from nwpipe.engine.delivery import DeliveryEngine
from nwpipe.net import http1
from nwpipe.outputs import Delivery

#: seconds a test waits for what should happen at once; reached only on failure
DEADLINE = 30.0


async def ends(task: asyncio.Task, timeout: float = DEADLINE) -> bool:
    """Whether ``task`` ends within ``timeout`` seconds (it is left running otherwise)."""
    await asyncio.wait((task,), timeout=timeout)
    return task.done()


async def cancelled_as_it_fails(wait) -> asyncio.Task:
    """A task awaiting ``wait(fut)``; ``fut`` fails and the task is cancelled in the same
    loop iteration (a connection refused just as --keep-queue stops the worker)."""
    fut = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(wait(fut))
    for _ in range(5):  # the task is now waiting
        await asyncio.sleep(0)
    fut.set_exception(ConnectionRefusedError(111, "Connection refused"))
    task.cancel()
    await asyncio.wait((task,), timeout=DEADLINE)
    return task


async def until_cancelled() -> None:
    """Wait for nothing but a cancel (no timer that a slow machine could outlast)."""
    await asyncio.Event().wait()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for is cancel-safe there")
def test_the_interleaving_loses_the_cancel_in_asyncio_wait_for():
    """The flaw that hung the run, shown with the same interleaving as the test below
    (so that test is known to force it)."""

    async def main():
        task = await cancelled_as_it_fails(lambda fut: asyncio.wait_for(fut, 5))
        assert not task.cancelled()
        assert isinstance(task.exception(), ConnectionRefusedError)

    asyncio.run(main())


def test_within_keeps_a_cancel_that_comes_as_the_awaited_fails():
    async def main():
        task = await cancelled_as_it_fails(lambda fut: within(fut, 5))
        assert task.cancelled()

    asyncio.run(main())


def test_within_times_out_and_passes_results_on():
    async def main():
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await within(loop.create_future(), 0.05)
        assert loop.time() - started < DEADLINE
        done = loop.create_future()
        done.set_result(7)
        assert await within(done, 5) == 7
        assert await within(asyncio.sleep(0, "x"), None) == "x"

    asyncio.run(main())


def test_a_pool_request_to_a_closed_port_cancelled_at_the_refusal_ends_cancelled():
    """The real HTTP client against a real closed port: the caller is cancelled just as
    the connection is refused; the worker must stop, not wait for its next event."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound and not listening: connecting is refused
    port = closed.getsockname()[1]

    async def main():
        loop = asyncio.get_running_loop()
        real = loop.create_connection
        worker: asyncio.Task | None = None

        async def refused_then_cancelled(*args, **kwargs):
            try:
                return await real(*args, **kwargs)
            except OSError:
                assert worker is not None
                worker.cancel()  # --keep-queue stops the worker as the refusal comes
                raise

        loop.create_connection = refused_then_cancelled  # type: ignore[method-assign]
        pool = http1.Pool("127.0.0.1", port)

        async def deliver_then_wait():
            try:
                await pool.request(b"POST / HTTP/1.1\r\nhost: x\r\n\r\n", b"", 5)
            except OSError:
                pass  # the engine takes a refusal for an attempt to retry
            await until_cancelled()  # a stopped worker never waits here

        worker = asyncio.ensure_future(deliver_then_wait())
        try:
            assert await ends(worker), "the cancelled worker went on"
            assert worker.cancelled()
        finally:
            worker.cancel()
            await pool.close()

    try:
        asyncio.run(main())
    finally:
        closed.close()


def test_cancel_and_wait_ends_a_task_that_swallows_its_cancel():
    async def main():
        swallowed = []

        async def stubborn():
            try:
                await until_cancelled()
            except asyncio.CancelledError:
                swallowed.append(True)  # a library that takes a cancel for a failure
            await until_cancelled()

        task = asyncio.ensure_future(stubborn())
        await asyncio.sleep(0)
        stopper = asyncio.ensure_future(cancel_and_wait([task]))
        assert await ends(stopper)
        assert task.cancelled() and swallowed == [True]

    asyncio.run(main())


class SwallowsCancel(Output):
    """An output plugin whose send takes the first cancel for a failed attempt (as an
    HTTP client on asyncio.wait_for did, once, when the cancel met a refusal)."""

    def __init__(self):
        super().__init__("stubborn", {})
        self.sending = asyncio.Event()
        self.swallowed = 0

    async def send(self, batch):
        self.sending.set()
        try:
            await until_cancelled()
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            return Retry("connection refused")
        return Retry("unreachable")


def test_an_engine_whose_output_swallows_a_cancel_still_stops_and_dead_letters(tmp_path):
    async def main():
        dl = DeadLetterFile(tmp_path / "dl.jsonl")
        retry = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.01,
                            max_elapsed=300)
        output = SwallowsCancel()
        engine = DeliveryEngine(output, EngineSettings(retry=retry, concurrency=2), dl)
        await engine.start()
        events = [{"id": f"a{n}", "n": n, "customer": "acme"} for n in range(4)]
        for n, event in enumerate(events):
            await engine.submit(Delivery(id=f"d{n}", body=event, event=event,
                                         output="stubborn", source="t", line=n))
        await asyncio.wait_for(output.sending.wait(), DEADLINE)
        stopping = asyncio.ensure_future(engine.abandon("not delivered: stopped"))
        assert await ends(stopping), "abandon() waited forever for a worker"
        assert output.swallowed == 1 and engine.backlog == 0
        closing = asyncio.ensure_future(engine.close())
        assert await ends(closing)
        dl.close()
        # every event is accounted for: each is in the dead-letter file
        records = read_records(tmp_path / "dl.jsonl")
        assert sorted(r["event"]["n"] for _line, r in records) == [0, 1, 2, 3]

    asyncio.run(main())


def test_sigterm_ends_a_keep_queue_run_with_a_down_output(tmp_path, receivers):  # noqa: F811
    """The hang's setting (one healthy output, one on a closed port, small memory
    queues, --keep-queue) stopped by SIGTERM once the down output spilled to the queue:
    the run ends with 143, and every event is delivered, dead-lettered or queued for
    each output."""
    healthy = receivers(tmp_path / "healthy.jsonl", delay=0.01).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/in"
        keys = write_alerts(tmp_path / "events.jsonl", alerts=400)  # 2,000 events
        config(tmp_path / "c.toml", {"healthy": healthy.url, "down": down}, queue_size=50)
        proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--keep-queue",
                      "--dead-letter", "dl.jsonl", cwd=tmp_path)
        lines: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:  # until the down output spilled to the queue
            lines.append(line)
            if "failing, with its memory queue full" in line:
                break
        assert any("memory queue full" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            _out, err = proc.communicate(timeout=60)
        except Exception:
            proc.kill()
            raise
        assert time.monotonic() - started < 60
        stderr = "".join(lines) + err
        assert proc.returncode in (0, 143), stderr  # 0 when it had ended already
        assert "Traceback" not in stderr
    finally:
        closed.close()
    # reading stopped at the signal: the events read are accounted for (a line cut
    # short is dead-lettered raw), the rest was never taken from the file
    read = summary_count(stderr, r"read (\d+) events")
    records = dead_letters(tmp_path / "dl.jsonl")
    cut = {keys[r["line"] - 1] for r in records if "raw" in r}
    status = queue_status(tmp_path)
    expected = set(keys[:read]) - cut
    for name in ("healthy", "down"):
        settled = {(r["event"]["id"], r["event"]["updatecount"]) for r in records
                   if "event" in r and r["output"] in (name, None)}
        if name == "healthy":
            settled |= {(a, n) for a, n, _ in arrivals(healthy)}
        queued = status["outputs"].get(name, {}).get("events", 0)
        assert len(expected - settled) <= queued, (name, read, len(settled), queued)
