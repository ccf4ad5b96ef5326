"""A minimal aiohttp server for figure 5: a token endpoint and Get Analysis, nothing else.

``python -m benchmarks._minimal_api`` prints one JSON line (``base_url``, ``token_url``,
``client_id``, ``client_secret``) and serves until terminated. Every Get Analysis answers the
same Complete 5-rep squat analysis, built once by the emulator's synthetic data: the server's
own work per request is as small as aiohttp allows, so the clients' CPU is what differs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from aiohttp import web

from guru_async import Activity
from guru_async.testing import _synthetic

CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
TOKEN = "bench-token-" + "x" * 40
REPS = 5


def analysis_body() -> bytes:
    """The Complete 5-rep squat analysis every Get Analysis answers, as JSON bytes."""
    plan = _synthetic.make_plan(
        seed=5,
        content_sha256="0" * 64,
        activity=Activity.SQUAT,
        rep_count=REPS,
        video_seconds=10.0,
        fps=30.0,
    )
    body: dict[str, Any] = {
        "status": "Complete",
        "domain": "weightlifting",
        "activity": "squat",
        "reps": _synthetic.analysis_reps(plan),
    }
    return json.dumps(body).encode()


def make_app() -> web.Application:
    """The two routes."""
    analysis = analysis_body()
    token = json.dumps({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})

    async def token_route(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=token.encode(), content_type="application/json")

    async def analysis_route(request: web.Request) -> web.Response:
        return web.Response(body=analysis, content_type="application/json")

    app = web.Application()
    app.router.add_post("/oauth2/token", token_route)
    app.router.add_get("/videos/{id}/analysis", analysis_route)
    return app


async def serve() -> None:
    """Serve on a free loopback port, announce it, and run until cancelled."""
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    port = server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    announced = {
        "base_url": base,
        "token_url": f"{base}/oauth2/token",
        "storage_url": base,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    print(json.dumps(announced), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)
