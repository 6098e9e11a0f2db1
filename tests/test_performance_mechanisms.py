"""The mechanisms kept for a benchmark figure, each guarded by what it saves (a count of
timers, encodes, wraps), so that simplifying one away fails here, not only in `make bench`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.events.feed import Feed
from service.events.model import StoredEvent
from service.events.tail import Watermark
from service.metrics import Metrics
from service.rpc import wire
from service.rpc.interceptor import CallInterceptor
from tests.processes import serve_env, serve_process
from tests.support import WEBHOOK_SECRET, eventually

pytestmark = pytest.mark.asyncio
SERVICE = "bench.Echo"


async def test_a_thousand_waits_share_one_loop_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle streams wait on the log's watermark with a timeout each: 1,000 waits with the
    same timeout set one loop timer (a timer each is a libuv handle per stream), and all
    still end when the mark passes."""
    loop = asyncio.get_running_loop()
    timers = 0
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Callable[..., Any], *args: Any) -> Any:
        nonlocal timers
        timers += 1
        return call_at(when, callback, *args)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    mark = Watermark()
    waits = [mark.wait_past(0, timeout=60) for _ in range(1000)]
    assert timers == 1
    mark.advance(1)
    await asyncio.gather(*waits)


def _events(cursors: range) -> list[StoredEvent]:
    return [
        StoredEvent(cursor, f"evt-{cursor}", "account.updated", "a", "hibob", "o", 0.0, b"")
        for cursor in cursors
    ]


async def test_streams_sending_the_same_events_encode_each_once() -> None:
    """Every stream following the head sends the events just recorded: 1,000 streams'
    frames of the same 50 events encode each event once, in any batching."""
    cache = wire.FrameCache()
    events = _events(range(1, 51))
    for _ in range(1000):
        cache.frames(list(events), 100, None)
    cache.frames(events, 1, None)  # one a message: the same encoded events
    cache.frames(events[:10], 100, "hibob only")
    assert cache.encodes == 50


async def test_each_method_is_wrapped_once_whatever_the_calls() -> None:
    """The interceptor wraps a method's handler once, not per call (a closure and a
    handler per open stream would cost ~0.5 KiB each)."""
    interceptor = CallInterceptor(Metrics(), SERVICE)

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "One": grpc.unary_unary_rpc_method_handler(echo),
                    "Two": grpc.unary_unary_rpc_method_handler(echo),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ("One", "Two"):
                call = channel.unary_unary(f"/{SERVICE}/{method}", None, None)
                for _ in range(50):
                    assert await call(b"x") == b"x"
    finally:
        await server.stop(None)
    assert interceptor.wraps == 2


async def test_a_feed_keeps_no_instance_dict() -> None:
    """An open stream holds a Feed for its whole life: slots, not a dict per instance."""
    assert "__slots__" in Feed.__dict__
    assert all("__dict__" not in vars(cls) for cls in Feed.__mro__ if cls is not object)


@pytest.mark.slow
async def test_serve_moves_its_start_up_objects_out_of_the_collectors_reach(
    tmp_path: Path,
) -> None:
    """After start-up, `serve` freezes what it built (gc.freeze): a full collection then no
    longer walks it (it took ~45 ms, the p99 of sending one event to 1,000 streams)."""
    env = serve_env(tmp_path, WEBHOOK_SECRET, STACKONE_CONNECT_LOG_LEVEL="DEBUG")

    def freeze_lines() -> list[dict[str, object]]:
        return [x for x in serve.log_lines if str(x.get("message", "")).startswith("gc.freeze: ")]

    async with serve_process(env) as serve:
        await eventually(lambda: bool(freeze_lines()), timeout=10)
    (line,) = freeze_lines()
    frozen = int(str(line["message"]).split()[1])
    assert frozen > 10_000, line
