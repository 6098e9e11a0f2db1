"""Runs an aiohttp application on a TCP address and tells where it listens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class ListeningApp:
    """An aiohttp application that accepts connections."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """The `http://host:port` URL of the application."""
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def listening(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float = 5.0
) -> AsyncIterator[ListeningApp]:
    """Serves `app` on `host:port` (port 0 picks a free one) until the block exits.

    Args:
        app: the application to serve.
        host: the address to bind.
        port: the port to bind; 0 lets the kernel choose, read it back from the result.
        shutdown_timeout: seconds in-flight requests get to finish on exit.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield ListeningApp(runner=runner, host=host, port=int(bound_port))
    finally:
        await runner.cleanup()
