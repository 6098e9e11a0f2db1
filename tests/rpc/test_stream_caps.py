"""Caps on open event streams, on the real gRPC server: `STACKONE_CONNECT_MAX_STREAMS` for
the whole server (RESOURCE_EXHAUSTED past it) and `..._MAX_STREAMS_PER_CONNECTION`, grpc's
own HTTP/2 limit (a grpc client queues the excess until a stream of its connection ends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf.empty_pb2 import Empty
from google.rpc import error_details_pb2

from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.streams import StreamCall, attached, next_event
from tests.harness.support import deliver, details_of, eventually, make_settings, metric, webhook

pytestmark = pytest.mark.asyncio
SUBSCRIBERS = "stackone_connect_stream_subscribers"
REFUSED = 'stackone_connect_rpcs_total{code="RESOURCE_EXHAUSTED",method="StreamAccountEvents"}'


@asynccontextmanager
async def connection(target: str) -> AsyncIterator[pb_grpc.ConnectServiceAsyncStub]:
    """A client on a connection of its own: grpc channels to one target share their
    connection unless each keeps its own subchannel pool."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        yield pb_grpc.ConnectServiceStub(channel)


def open_stream(stub: pb_grpc.ConnectServiceAsyncStub) -> StreamCall:
    """A live stream of every account's events."""
    return stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_now=Empty()))


async def subscribers(service: Runtime) -> float:
    """The streams the server serves now (its metric)."""
    async with httpx.AsyncClient(base_url=service.admin.base_url) as http:
        return await metric(http, SUBSCRIBERS)


async def test_streams_past_the_server_cap_are_refused_and_a_slot_frees_when_one_ends(
    tmp_path: Path,
) -> None:
    """With MAX_STREAMS=3 a fourth stream gets RESOURCE_EXHAUSTED naming the setting, the
    three admitted go on receiving events, and once one ends a new stream is admitted."""
    settings = make_settings(tmp_path, max_streams=3)
    async with running(settings) as service, connection(service.grpc_target) as stub:
        admitted = [open_stream(stub) for _ in range(3)]
        for stream in admitted:
            await attached(stream)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await open_stream(stub).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "STACKONE_CONNECT_MAX_STREAMS" in str(refused.value.details())
        (info,) = details_of(refused.value, error_details_pb2.ErrorInfo)
        assert isinstance(info, error_details_pb2.ErrorInfo)
        assert (info.reason, info.metadata["limit"]) == ("TOO_MANY_STREAMS", "3")
        async with httpx.AsyncClient(base_url=service.admin.base_url) as admin:
            assert await metric(admin, REFUSED) == 1
        async with httpx.AsyncClient(base_url=service.gateway.base_url) as http:
            accepted = (await deliver(http, webhook())).json()
        for stream in admitted:
            assert (await next_event(stream)).event_id == accepted["event_id"]
        admitted.pop().cancel()
        await eventually(lambda: _subscribers_are(service, 2))
        replacement = open_stream(stub)
        await attached(replacement)
        replacement.cancel()
        for stream in admitted:
            stream.cancel()


async def test_streams_past_the_connection_cap_wait_while_another_connection_opens_more(
    tmp_path: Path,
) -> None:
    """With MAX_STREAMS_PER_CONNECTION=2 a third stream on one connection waits (grpc's
    client queues it, the server never sees it) while a stream on another connection is
    served; it starts once one of its connection's streams ends."""
    settings = make_settings(tmp_path, max_streams_per_connection=2)
    async with (
        running(settings) as service,
        connection(service.grpc_target) as first,
        connection(service.grpc_target) as second,
    ):
        admitted = [open_stream(first) for _ in range(2)]
        for stream in admitted:
            await attached(stream)
        waiting = open_stream(first)
        waiting_start = asyncio.ensure_future(attached(waiting))
        other = open_stream(second)
        await attached(other)
        assert await subscribers(service) == 3  # two on the first connection, one on the other
        assert not waiting_start.done()
        admitted.pop().cancel()
        await waiting_start
        for stream in (*admitted, waiting, other):
            stream.cancel()


async def _subscribers_are(service: Runtime, count: int) -> bool:
    return await subscribers(service) == count
