"""The mechanisms the webhook door keeps for its ratio to the durable limit (issue 38),
each guarded by what it saves per webhook (timers set, trace headers parsed), never by
timing it: simplifying one away fails here, not only in `make bench`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider

from gateway.app import WEBHOOK_PATH, GatewayState, init_app
from service.events.ingest import Ingestor
from service.events.model import EventLogError
from service.health import Health
from service.metrics import Metrics
from service.tracing import OFF, Tracing
from service.web import listening
from tests.harness.support import WEBHOOK_SECRET, LogBackend, signed_headers

pytestmark = pytest.mark.asyncio
WEBHOOKS = 20


@asynccontextmanager
async def door(tmp_path: Path, tracing: Tracing = OFF) -> AsyncIterator[int]:
    """A gateway on a SQLite log, as `serve` builds it; yields its port."""
    log = await LogBackend(f"sqlite:///{tmp_path / 'events.db'}").open()
    state = GatewayState(
        ingestor=Ingestor(log), secrets=[WEBHOOK_SECRET], url_token=None,
        health=Health(expected=(EventLogError,)), metrics=Metrics(),
    )  # fmt: skip
    try:
        async with listening(init_app(state, tracing), "127.0.0.1", 0) as app:
            yield app.port
    finally:
        await log.close()


def request_head(body: bytes) -> bytes:
    """The request line and headers of a signed webhook delivering `body`."""
    headers = {**signed_headers(body), "content-length": str(len(body))}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: x\r\n{head}\r\n".encode()


def deleted(account_id: str) -> bytes:
    """An account.deleted webhook body."""
    return orjson.dumps({"event": "account.deleted", "account_id": account_id})


async def answer(reader: asyncio.StreamReader) -> bytes:
    """Reads one response; returns its status line."""
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def post_webhooks(port: int, count: int = WEBHOOKS) -> list[bytes]:
    """Posts `count` signed account.deleted webhooks over one raw keep-alive connection
    (a client that sets no timers of its own), each whole in one write; returns the
    status lines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        statuses = []
        for n in range(count):
            body = deleted(f"acc-{n}")
            writer.write(request_head(body) + body)
            statuses.append(await answer(reader))
        return statuses
    finally:
        writer.close()


async def test_a_webhook_that_arrives_whole_sets_no_body_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook whose body came with its headers (nearly every one: they are small) is
    read without the body timeout's loop timer; the timer is set only for a body still
    arriving. 20 webhooks: no timeout timer (20 with the timeout entered every time)."""
    loop = asyncio.get_running_loop()
    body_timers = [0]
    timer_set = asyncio.Event()
    call_at = loop.call_at

    def counting_call_at(
        when: float, callback: Callable[..., Any], *args: Any, **context: Any
    ) -> Any:
        if isinstance(getattr(callback, "__self__", None), asyncio.Timeout):
            body_timers[0] += 1
            timer_set.set()
        return call_at(when, callback, *args, **context)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    async with door(tmp_path) as port:
        statuses = await post_webhooks(port)
        assert statuses == [b"HTTP/1.1 200 OK\r\n"] * WEBHOOKS
        assert body_timers == [0]
        # A body sent after its headers is still read under the timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = deleted("late")
        writer.write(request_head(body))
        await timer_set.wait()  # the door waits for the body under its timer
        writer.write(body)
        assert await answer(reader) == b"HTTP/1.1 200 OK\r\n"
        writer.close()


async def test_an_untraced_door_never_parses_trace_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tracing off no span is made, so a signed webhook's traceparent, tracestate and
    baggage are left unparsed (the propagators' extract ran once per webhook); traced,
    each signed webhook's headers are read once, to continue its trace."""
    extracts = [0]
    extract = propagate.extract

    def counting_extract(*args: Any, **kwargs: Any) -> Any:
        extracts[0] += 1
        return extract(*args, **kwargs)

    monkeypatch.setattr(propagate, "extract", counting_extract)
    (tmp_path / "off").mkdir()
    async with door(tmp_path / "off") as port:
        assert await post_webhooks(port) == [b"HTTP/1.1 200 OK\r\n"] * WEBHOOKS
    assert extracts == [0]
    provider = TracerProvider()
    (tmp_path / "on").mkdir()
    async with door(tmp_path / "on", Tracing(provider)) as port:
        assert await post_webhooks(port) == [b"HTTP/1.1 200 OK\r\n"] * WEBHOOKS
    provider.shutdown()
    assert extracts == [WEBHOOKS]
