"""Runs an aiohttp application on a TCP address and tells where it listens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web


@dataclass(slots=True)
class ListeningApp:
    """An aiohttp application that accepts connections."""

    runner: web.AppRunner
    host: str
    port: int
    _stopped: bool = False

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish (up to the shutdown timeout)."""
        if not self._stopped:
            self._stopped = True
            await self.runner.cleanup()

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
    listening_app = ListeningApp(runner=runner, host=host, port=0)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        listening_app.port = int(runner.addresses[0][1])
        yield listening_app
    finally:
        await listening_app.stop()
