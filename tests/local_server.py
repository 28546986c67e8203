"""The base of the tests' fake upstream servers: a tornado app on a free loopback port of the running loop."""

from __future__ import annotations

from typing import Any, Self

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


class LocalServer:
    """Start it inside a running event loop (pytest-jupyter gives every test a fresh one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._server: HTTPServer | None = None

    def routes(self) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def start(self) -> Self:
        sockets = bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(tornado.web.Application(self.routes()))
        self._server.add_sockets(sockets)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
