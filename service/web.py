"""Runs an aiohttp application on a TCP address and tells where it listens.

Listeners that face the internet get bounds aiohttp does not apply by default: an
idle/keep-alive timeout (aiohttp closes a connection that has not completed a request's
headers within it, which also bounds slow headers), a cap on open connections, past
which a new connection is answered 503 and closed without reaching the application, and
no lingering: a connection whose body the application left unread is closed after the
answer, where aiohttp would read and decompress the rest for up to 10 s.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from service.logs import PeerFaultsQuiet

_TURNED_AWAY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Length: 0\r\n\r\n"
)


# True on an application that decodes Content-Encoding itself (the gateway, which bounds
# its decoding): its server hands it bodies as they came over the wire.
RAW_BODIES = web.AppKey("raw_bodies", bool)


class CannotListen(OSError):
    """A listener could not bind its address; the message names it and what uses it."""


def check_free(addresses: Mapping[str, str]) -> None:
    """Raises `CannotListen` for the first `host:port` another process holds, named by the
    setting it comes from (`addresses` maps settings to addresses): run before anything
    starts, so the refusal is the one thing printed (grpc logs its own error first)."""
    for setting, address in addresses.items():
        host, _, port = address.rpartition(":")
        if port == "0":
            continue
        try:
            family, kind, proto, _, where = socket.getaddrinfo(
                host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )[0]  # fmt: skip
        except (OSError, ValueError):
            continue  # the listener itself reports an address it cannot resolve
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            try:
                probe.bind(where)
            except OSError as error:
                raise CannotListen(
                    f"cannot listen on {address} ({setting}): {error.strerror}"
                ) from error


class _TurnAway(asyncio.Protocol):
    """Answers a connection over the cap with 503 and closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_TURNED_AWAY)
        transport.close()


class _CappedSite(web.TCPSite):
    """A TCP site that accepts at most `max_connections` open connections."""

    __slots__ = ("_max_connections",)

    def __init__(self, runner: web.AppRunner, host: str, port: int, max_connections: int) -> None:
        super().__init__(runner, host, port)
        self._max_connections = max_connections

    async def start(self) -> None:
        """TCPSite.start, with a protocol factory that counts open connections first."""
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner is not set up")

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= self._max_connections:
                return _TurnAway()
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


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
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 5.0,
    keepalive_timeout: float = 75.0,
    max_connections: int = 10_000,
    purpose: str = "",
) -> AsyncIterator[ListeningApp]:
    """Serves `app` on `host:port` (port 0 picks a free one) until the block exits.

    Args:
        app: the application to serve.
        host: the address to bind.
        port: the port to bind; 0 lets the kernel choose, read it back from the result.
        shutdown_timeout: seconds in-flight requests get to finish on exit.
        keepalive_timeout: seconds a connection may wait for a request's headers to
            complete, whether it is new or idle between requests.
        max_connections: open connections past which new ones are answered 503.
        purpose: what the address is for (e.g. the setting naming it), for the error
            `CannotListen` raises when it cannot be bound.
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=keepalive_timeout,
        lingering_time=0,
        auto_decompress=not app.get(RAW_BODIES, False),
        logger=PeerFaultsQuiet(),  # a request that is not HTTP is the sender's fault
    )
    await runner.setup()
    listening_app = ListeningApp(runner=runner, host=host, port=0)
    try:
        site = _CappedSite(runner, host, port, max_connections)
        try:
            await site.start()
        except OSError as error:
            where = f" ({purpose})" if purpose else ""
            raise CannotListen(
                f"cannot listen on {host}:{port}{where}: {error.strerror}"
            ) from error
        listening_app.port = int(runner.addresses[0][1])
        yield listening_app
    finally:
        await listening_app.stop()
