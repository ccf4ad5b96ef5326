"""A tiny aiohttp.web server on 127.0.0.1 that answers every request with what a test crafted.

Real sockets, so the SDK is exercised exactly as against a hostile or broken server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from attrs import define, field

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@define
class Hit:
    """One request the server received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@define
class CraftedServer:
    """Answers every method and path with the reply set by :meth:`respond` or :meth:`handle`."""

    hits: list[Hit] = field(factory=list)
    _handler: Handler | None = None
    _runner: web.AppRunner | None = None
    _url: str = ""

    async def start(self) -> CraftedServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """The server's root URL."""
        return self._url

    def respond(
        self,
        status: int = 200,
        body: bytes | str = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer every request with this status, body and headers."""
        raw = body.encode() if isinstance(body, str) else body

        async def reply(request: web.Request) -> web.StreamResponse:
            return web.Response(status=status, body=raw, content_type=content_type, headers=headers)

        self._handler = reply

    def handle(self, handler: Handler) -> None:
        """Answer every request with ``handler``."""
        self._handler = handler

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(
            Hit(
                request.method,
                request.path,
                request.query_string,
                {k.lower(): v for k, v in request.headers.items()},
                await request.read(),
            )
        )
        assert self._handler is not None, "the test set no reply"
        return await self._handler(request)
