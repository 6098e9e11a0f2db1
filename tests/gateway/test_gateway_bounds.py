"""A body the gateway refuses is not read further: past the size limit (on the wire or
decoded) the answer says `Connection: close` and the connection ends, so an
unauthenticated sender costs the server milliseconds, whatever the body's size or encoding.

It used to answer 413 at once and then read and decompress what followed for up to 10 s
(aiohttp's lingering close): ~9.5 s of CPU per 8 MiB gzip of zeros, with gRPC health and
other webhooks waiting 5-7 s behind two of them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.app import MAX_BODY_BYTES, WEBHOOK_PATH, GatewayState, init_app
from gateway.encoding import BodyTooLarge, UndecodableBody, decode
from service.events.ingest import Ingestor
from service.events.sqlite import SqliteEventLog
from service.health import Health
from service.metrics import Metrics
from service.web import listening
from tests.harness.processes import serve_env, serve_process
from tests.harness.support import WEBHOOK_SECRET, deliver, webhook

HUGE = 8 << 20  # bytes on the wire: ~8 GiB of zeros once decoded
CPU_BUDGET = 0.1  # seconds of server CPU one refused body may cost
SMALL_LIMIT = 4096  # the in-process gateway's body limit
WBITS = {"gzip": 31, "deflate": 15}  # zlib's framing of each Content-Encoding
_T = TypeVar("_T")


def compressed_zeros(encoding: str, size: int) -> bytes:
    """`size` bytes of gzip or deflate that decode to ~1000 times as many zeros; built
    from one fully flushed block repeated, so the test does not compress gigabytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, WBITS[encoding])
    megabyte = bytes(1 << 20)
    first = compressor.compress(megabyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(megabyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    return (first + block * (size // len(block) + 1))[:size]


# A stored deflate block of no bytes, not the last: a stream of them decodes to nothing.
EMPTY_BLOCKS = b"\x00\x00\x00\xff\xff" * 13_000
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def body_of(encoding: str, size: int) -> bytes:
    """`size` bytes in `encoding`; identity bodies are JSON-ish text."""
    if encoding == "identity":
        return b'{"padding": "' + b"x" * size + b'"}'
    return compressed_zeros(encoding, size)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process `pid` has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class UnsignedUpload:
    """A POST with no signature that sends its whole body for as long as the server takes
    it, over a raw connection (an HTTP client would stop at the first refused write)."""

    port: int
    body: bytes
    encoding: str = "gzip"
    chunked: bool = False
    path: str = WEBHOOK_PATH
    content_type: str = "application/json"
    then_forever: bytes = b""  # sent over and over after the body, when not empty
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    response_head: bytes = b""
    sent: int = 0

    @property
    def status(self) -> int:
        """The answer's status code."""
        return int(self.response_head.split(b" ", 2)[1])

    @property
    def closes(self) -> bool:
        """Whether the answer says `Connection: close`."""
        return b"\r\nconnection: close\r\n" in self.response_head.lower()

    async def run(self) -> None:
        """Sends the request and reads the answer until the server ends the connection.

        A raw socket, so that a refused write (the server closed) does not throw away the
        answer already received, as a stream transport would."""
        loop = asyncio.get_running_loop()
        with socket.socket() as connection:
            connection.setblocking(False)
            await loop.sock_connect(connection, ("127.0.0.1", self.port))
            await loop.sock_sendall(connection, self.request_head())
            sending = asyncio.create_task(self._send(connection))
            try:
                await self._receive(connection)
            finally:
                sending.cancel()  # the server closed the connection: it takes no more
                with suppress(asyncio.CancelledError):
                    await sending

    def request_head(self) -> bytes:
        """The request line and headers."""
        framing = (
            "Transfer-Encoding: chunked" if self.chunked else f"Content-Length: {len(self.body)}"
        )
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Encoding: {self.encoding}\r\n{framing}\r\n\r\n"
        ).encode()

    async def _send(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with suppress(ConnectionError):  # the server closed: it takes no more
            for start in range(0, len(self.body), 1 << 16):
                piece = self.body[start : start + (1 << 16)]
                framed = b"%x\r\n%s\r\n" % (len(piece), piece) if self.chunked else piece
                await loop.sock_sendall(connection, framed)
                self.sent += len(piece)
            while self.then_forever:
                await loop.sock_sendall(
                    connection, b"%x\r\n%s\r\n" % (len(self.then_forever), self.then_forever)
                )
                self.sent += len(self.then_forever)
            if self.chunked:
                await loop.sock_sendall(connection, b"0\r\n\r\n")

    async def _receive(self, connection: socket.socket) -> None:
        """Reads the answer's head, then until the server closes or resets `connection`."""
        loop = asyncio.get_running_loop()
        received = b""
        with suppress(ConnectionError):
            while data := await loop.sock_recv(connection, 1 << 16):
                received += data
                head, end, _ = received.partition(b"\r\n\r\n")
                if end and not self.answered.is_set():
                    self.response_head = head + b"\r\n"
                    self.answered.set()


SERVE_ENV = {
    # So that a server that keeps the connection after the refusal closes it soon after
    # reading the rest, and the test measures that reading instead of timing out.
    "STACKONE_CONNECT_GATEWAY_IDLE_TIMEOUT": "1",
}


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize(
    ("size", "chunked"),
    [(HUGE, False), (HUGE, True), (MAX_BODY_BYTES, False)],
    ids=["8MiB-content-length", "8MiB-chunked", "256KiB-content-length"],
)
async def test_a_compressed_bomb_costs_the_server_under_100ms_of_cpu(
    tmp_path: Path, encoding: str, size: int, chunked: bool
) -> None:
    """An unsigned gzip/deflate of zeros to a real `serve` (8 MiB: refused by its length or
    once 256 KiB are decoded; 256 KiB: by what it decodes to): 413, `Connection: close`,
    and under 100 ms of server CPU (the 8 MiB one took ~9.5 s, decoding what followed)."""
    async with serve_process(serve_env(tmp_path, WEBHOOK_SECRET, **SERVE_ENV)) as serve:
        port = _port_of(serve.gateway_url)
        warm_up = UnsignedUpload(port, compressed_zeros(encoding, SMALL_LIMIT), encoding, chunked)
        upload = UnsignedUpload(port, compressed_zeros(encoding, size), encoding, chunked)
        spent = await _cpu_of(serve.pid, warm_up, upload)
    print(f"server CPU for a refused {size >> 10} KiB {encoding} body: {spent * 1000:.0f} ms")
    assert (upload.status, upload.closes) == (413, True)
    assert spent < CPU_BUDGET, f"the refusal cost {spent * 1000:.0f} ms of server CPU"


async def _cpu_of(pid: int, warm_up: UnsignedUpload, upload: UnsignedUpload) -> float:
    """Seconds of the server's CPU that `upload` costs, after `warm_up` has paid what a
    first request costs whatever its size (~40 ms)."""
    async with asyncio.timeout(40):
        await warm_up.run()
        before = cpu_seconds(pid)
        await upload.run()
        return cpu_seconds(pid) - before


@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_compressed_stream_that_decodes_to_nothing_is_cut_at_the_limit(
    tmp_path: Path,
) -> None:
    """An unsigned chunked gzip of empty blocks, sent without end: 413 once the bytes on
    the wire pass the limit, under 100 ms of CPU (it was read until the 10 s body timeout,
    gigabytes at a core's full CPU, since the decoded size never grew)."""
    async with serve_process(serve_env(tmp_path, WEBHOOK_SECRET, **SERVE_ENV)) as serve:
        port = _port_of(serve.gateway_url)
        warm_up = UnsignedUpload(port, compressed_zeros("gzip", SMALL_LIMIT), chunked=True)
        upload = UnsignedUpload(
            port, GZIP_HEADER + EMPTY_BLOCKS, chunked=True, then_forever=EMPTY_BLOCKS
        )
        spent = await _cpu_of(serve.pid, warm_up, upload)
    print(f"server CPU for {upload.sent >> 10} KiB of empty gzip blocks: {spent * 1000:.0f} ms")
    assert (upload.status, upload.closes) == (413, True)
    assert spent < CPU_BUDGET, f"the refusal cost {spent * 1000:.0f} ms of server CPU"


@pytest.mark.asyncio
@pytest.mark.slow
async def test_health_and_webhooks_are_prompt_while_two_huge_bodies_are_refused(
    tmp_path: Path,
) -> None:
    """With two unsigned 8 MiB compressed uploads refused, gRPC health and a signed webhook
    are answered within 1 s (they waited 5-7 s) and the server spends under 0.5 s of CPU."""
    env = serve_env(tmp_path, WEBHOOK_SECRET, **SERVE_ENV)
    async with (
        serve_process(env) as serve,
        grpc.aio.insecure_channel(serve.grpc_target) as channel,
        httpx.AsyncClient(base_url=serve.gateway_url, timeout=30) as http,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest())  # connected before measuring
        port = _port_of(serve.gateway_url)
        uploads = [
            UnsignedUpload(port, compressed_zeros("gzip", HUGE), "gzip"),
            UnsignedUpload(port, compressed_zeros("deflate", HUGE), "deflate", chunked=True),
        ]
        before = cpu_seconds(serve.pid)
        async with asyncio.timeout(40), asyncio.TaskGroup() as group:
            for upload in uploads:
                group.create_task(upload.run())
            await asyncio.gather(*(upload.answered.wait() for upload in uploads))
            health_took, reply = await _timed(health.Check(health_pb2.HealthCheckRequest()))
            webhook_took, response = await _timed(deliver(http, webhook()))
        spent = cpu_seconds(serve.pid) - before
        await serve.stop()
    assert [upload.status for upload in uploads] == [413, 413]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert response.status_code == 200
    assert response.headers.get("connection") != "close", "a webhook read whole keeps it"
    assert health_took < 1.0, f"health took {health_took:.2f} s"
    assert webhook_took < 1.0, f"the webhook took {webhook_took:.2f} s"
    assert spent < 0.5, f"the server spent {spent * 1000:.0f} ms of CPU"
    assert [line for line in serve.log_lines if line.get("level") == "ERROR"] == []


async def _timed(call: Awaitable[_T]) -> tuple[float, _T]:
    """How long `call` took to answer, and its answer."""
    started = time.monotonic()
    result = await call
    return time.monotonic() - started, result


def _port_of(url: str) -> int:
    return int(url.rpartition(":")[2])


@pytest_asyncio.fixture
async def gateway_port(event_log: SqliteEventLog) -> AsyncIterator[int]:
    """The port of an in-process gateway that takes bodies of up to SMALL_LIMIT bytes."""
    state = GatewayState(
        ingestor=Ingestor(event_log),
        secrets=[WEBHOOK_SECRET],
        url_token=None,
        health=Health(),  # readiness is not what this tests
        metrics=Metrics(),
        max_body_bytes=SMALL_LIMIT,
        body_timeout=5,
    )
    async with listening(init_app(state), "127.0.0.1", 0) as app:
        yield app.port


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_past_the_limit_gets_413_and_its_connection_ends(
    gateway_port: int, encoding: str, chunked: bool
) -> None:
    """Past the limit the answer is 413 with `Connection: close`, and the server ends the
    connection instead of taking (and decoding) the rest of the body."""
    upload = UnsignedUpload(gateway_port, body_of(encoding, 1 << 20), encoding, chunked)
    async with asyncio.timeout(10):
        await upload.run()
    assert (upload.status, upload.closes) == (413, True)


@pytest.mark.asyncio
async def test_a_content_length_over_the_limit_is_refused_before_the_body(
    gateway_port: int,
) -> None:
    """A Content-Length over the limit is answered 413 before a byte of the body is sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    writer.write(UnsignedUpload(gateway_port, bytes(SMALL_LIMIT + 1), "identity").request_head())
    async with asyncio.timeout(3):
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # then the server closes
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 413")


@pytest.mark.asyncio
async def test_a_refusal_before_reading_the_body_ends_the_connection(gateway_port: int) -> None:
    """A body refused unread (415 here) is not read after the answer either."""
    body = compressed_zeros("gzip", 1 << 20)
    upload = UnsignedUpload(gateway_port, body, "gzip", content_type="text/plain")
    async with asyncio.timeout(10):
        await upload.run()
    assert (upload.status, upload.closes) == (415, True)


async def _answer_unread(request: web.Request) -> web.Response:
    return web.Response(text="not reading that")


@pytest.mark.asyncio
async def test_any_listener_ends_a_connection_whose_body_was_left_unread() -> None:
    """Every listener (the emulator's, the admin one) ends a connection whose body the
    application did not read, instead of reading and decoding the rest after the answer."""
    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, _answer_unread)
    async with listening(app, "127.0.0.1", 0) as unread:
        upload = UnsignedUpload(unread.port, compressed_zeros("gzip", HUGE), "gzip")
        async with asyncio.timeout(10):
            await upload.run()
    assert upload.status == 200


@pytest.mark.parametrize(
    ("content_encoding", "encode"),
    [
        ("", lambda data: data),
        ("identity", lambda data: data),
        ("gzip", lambda data: zlib.compress(data, wbits=31)),
        ("x-gzip", lambda data: zlib.compress(data, wbits=31)),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data, wbits=-15)),  # raw, as senders often do
        ("deflate, gzip", lambda data: zlib.compress(zlib.compress(data), wbits=31)),
    ],
)
def test_every_coding_decodes_to_the_body(
    content_encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    """Each coding the gateway takes decodes to what was sent, codings undone in order."""
    body = b'{"event": "account.created"}' * 10
    assert decode(encode(body), content_encoding, len(body)) == body


def test_decoding_stops_past_the_limit_and_on_a_wrong_coding() -> None:
    """One byte over the limit decoded is too large; bytes not in the named coding are not
    decoded; and a 1 GiB gzip stops at the limit at once."""
    with pytest.raises(BodyTooLarge):
        decode(zlib.compress(bytes(SMALL_LIMIT + 1), wbits=31), "gzip", SMALL_LIMIT)
    with pytest.raises(UndecodableBody):
        decode(b"{not gzip}", "gzip", SMALL_LIMIT)
    started = time.process_time()
    with pytest.raises(BodyTooLarge):
        decode(compressed_zeros("gzip", 1 << 20), "gzip", SMALL_LIMIT)
    assert time.process_time() - started < CPU_BUDGET
