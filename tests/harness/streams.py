"""Helpers to read a StreamAccountEvents call in tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty

from service.events import cursors
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc

StreamCall = grpc.aio.UnaryStreamCall[Any, pb.StreamAccountEventsResponse]


async def next_item(stream: StreamCall, timeout: float = 5.0) -> pb.StreamAccountEventsResponse:
    """The next message of the stream, failing the test if none comes in time."""
    async with asyncio.timeout(timeout):
        item = await stream.read()
    assert isinstance(item, pb.StreamAccountEventsResponse), "the stream ended"
    return item


async def next_event(stream: StreamCall, timeout: float = 5.0) -> pb.AccountEvent:
    """The next event of the stream, skipping bookmarks."""
    async with asyncio.timeout(timeout):
        while True:
            item = await next_item(stream, timeout)
            if item.HasField("event"):
                return item.event


def position(cursor: str) -> int:
    """The position a cursor names in its log: `latest` may be a public cursor or the
    log's own number for it (`bounds().latest`)."""
    parsed = cursors.parse(cursor)
    assert parsed is not None, f"not a cursor: {cursor!r}"
    return parsed.sequence


async def events_until_caught_up(stream: StreamCall, latest: str) -> list[pb.AccountEvent]:
    """Every event until a bookmark (or event) at cursor `latest` shows the stream caught up.

    Events may come one per message or in batches (`max_events_per_message`).
    """
    events: list[pb.AccountEvent] = []
    while True:
        item = await next_item(stream)
        if item.HasField("bookmark"):
            if position(item.bookmark.cursor) >= position(latest):
                return events
            continue
        arrived = [item.event] if item.HasField("event") else list(item.events.events)
        events.extend(arrived)
        if position(arrived[-1].cursor) == position(latest):
            return events


async def attached(stream: StreamCall) -> str:
    """Waits for the first bookmark (the stream is attached); returns its cursor."""
    item = await next_item(stream)
    assert item.HasField("bookmark"), "a stream starts with a bookmark"
    return item.bookmark.cursor


async def events_covering(stream: StreamCall, event_ids: set[str]) -> list[pb.AccountEvent]:
    """Every event of the stream until the webhooks they cover include all of `event_ids`
    (webhooks of one account that waited together arrive folded into one event)."""
    events: list[pb.AccountEvent] = []
    missing = set(event_ids)
    while missing:
        item = await next_item(stream, timeout=30)
        arrived = [item.event] if item.HasField("event") else list(item.events.events)
        for event in arrived:
            events.append(event)
            missing -= set(event.covered_event_ids) | {event.event_id}
    return events


@asynccontextmanager
async def subscribed(target: str, **request: object) -> AsyncIterator[StreamCall]:
    """A stream on the server at `target`, attached (its first bookmark read)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ConnectServiceStub(channel)
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(**request))  # type: ignore[arg-type]
        await attached(stream)
        yield stream
        stream.cancel()


async def replay_all(stub: pb_grpc.ConnectServiceAsyncStub) -> list[pb.AccountEvent]:
    """Every event recorded so far, read from the earliest up to the latest cursor."""
    live = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    latest = await attached(live)
    live.cancel()
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_earliest=Empty()))
    events = await events_until_caught_up(stream, latest)
    stream.cancel()
    return events
