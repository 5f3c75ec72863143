"""Operations endpoints: ``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.

They need no credentials (they show counts, never events or secrets). ``nwpipe serve``
answers them on its own listener or on ``metrics_listen``; ``nwpipe run
--metrics-listen HOST:PORT`` starts them on a listener of their own.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from aiohttp import web

from nwpipe.engine.metrics import Metrics
from nwpipe.errors import NwpipeError
from nwpipe.sources.serve_settings import parse_listen

log = logging.getLogger("nwpipe")

#: why the process is not ready (None: ready)
ReadyCheck = Callable[[], Awaitable["str | None"]]


async def _always_ready() -> str | None:
    return None


def add_ops_routes(app: web.Application, metrics: Metrics, ready: ReadyCheck | None = None) -> None:
    """Answer the three operations endpoints on ``app``."""
    ready = ready or _always_ready

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problem = await ready()
        if problem is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "error": problem}, status=503,
                                 headers={"Retry-After": "5"})

    async def metrics_page(request: web.Request) -> web.Response:
        body, content_type = await metrics.render(request.headers.get("Accept"))
        response = web.Response(body=body)
        # set whole: the exposition type carries parameters (version, charset)
        response.headers["Content-Type"] = content_type
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)


async def start_site(app: web.Application, listen: str, *, ssl_context=None,
                     what: str = "listen", **runner_args) -> web.AppRunner:
    """Run ``app`` on ``HOST:PORT``; a port that cannot be bound is a clear NwpipeError."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log=None, **runner_args)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise NwpipeError(f"{what} {listen}: cannot listen: {exc.strerror or exc}") from None
    return runner


def bound_url(runner: web.AppRunner, scheme: str = "http") -> str:
    """``http://HOST:PORT`` where ``runner`` listens (the real port when 0 was asked)."""
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


async def start_ops_server(listen: str, metrics: Metrics,
                           ready: ReadyCheck | None = None) -> web.AppRunner:
    """The operations endpoints on a listener of their own; logs where."""
    app = web.Application()
    add_ops_routes(app, metrics, ready)
    runner = await start_site(app, listen, what="metrics_listen")
    log.info("metrics on %s/metrics", bound_url(runner))
    return runner
