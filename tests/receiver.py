"""A webhook receiver run as its own process, for the fault-injection tests.

    python tests/receiver.py --log received.jsonl [--port N] [--delay S] [--fail-while FILE]
                             [--header NAME]

Prints the port it listens on (one line on stdout) once it accepts connections. Every
request is appended to the log as one JSON line, *before* the answer is sent:
``{"status": 200, "webhook_id": ..., "events": [{"id": ..., "alerttype": ...,
"updatecount": ...}, ...]}``, plus ``"header"``: the value of the request header NAME
(``--header``), which tells the senders apart when several processes deliver.
So a request that was logged with status 200 may still never have been answered (the
process was killed, or the client gave up): the sender then retries or dead-letters it,
and the receiver sees a duplicate, which at-least-once delivery allows.

Answers 503 while FILE exists (``--fail-while``), else 200 after ``--delay`` seconds.
Each log line is one ``write`` to a file opened with O_APPEND, so a SIGKILL never leaves
half a line, and nothing written is lost with the process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fail-while", metavar="FILE")
    parser.add_argument("--header", metavar="NAME")
    args = parser.parse_args()
    log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            data = json.loads(body)
        except ValueError:
            data = [json.loads(line) for line in body.splitlines() if line.strip()]
        events = data if isinstance(data, list) else [data]
        failing = args.fail_while is not None and os.path.exists(args.fail_while)
        status = 503 if failing else 200
        entry = {"status": status, "webhook_id": request.headers.get("webhook-id"),
                 "events": [{"id": e.get("id"), "alerttype": e.get("alerttype"),
                             "updatecount": e.get("updatecount")} for e in events]}
        if args.header:
            entry["header"] = request.headers.get(args.header)
        os.write(log_fd, (json.dumps(entry) + "\n").encode())
        if failing:
            return web.Response(status=503, text="down for maintenance")
        if args.delay:
            await asyncio.sleep(args.delay)
        return web.Response(status=200)

    async def serve() -> None:
        server = web.Server(handle)
        runner = web.ServerRunner(server, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_address=True)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
