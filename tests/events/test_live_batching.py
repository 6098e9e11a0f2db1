"""Live events on a real server: batched for a reader that falls behind, one at a time for
one that keeps up, and encoded once for every stream that sends them."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from service.events.model import EventFilter, StoredEvent
from service.events.tail import Watermark
from service.rpc import wire
from service.runtime import Runtime
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.records import padded_record
from tests.harness.streams import attached, next_item

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]  # the service fixture runs on each


def events_of(item: pb.StreamAccountEventsResponse) -> list[pb.AccountEvent]:
    """The events one message carries (none for a bookmark)."""
    if item.HasField("event"):
        return [item.event]
    return list(item.events.events)


async def test_a_reader_that_falls_behind_gets_what_it_missed_in_batches(
    service: Runtime,
) -> None:
    """Events recorded one by one while a subscriber reads nothing reach it, once it reads,
    mostly in batches (more than one event per message), in cursor order, none missing
    and none twice."""
    count = 200  # 20 KB each: 4 MB, far more than the HTTP/2 window of a reader that waits
    request = pb.StreamAccountEventsRequest(max_events_per_message=1000)
    # A reader whose window stays at HTTP/2's default 64 KiB (no growth from bandwidth
    # probes): once that much waits unread, the server's next write waits for it.
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(service.grpc_target, options=options) as channel:
        stream = pb_grpc.ConnectServiceStub(channel).StreamAccountEvents(request)
        start = int(await attached(stream))
        for number in range(count):  # one append (and one wake-up) per event
            await service.event_log.append([padded_record(number, label_bytes=20_000)])
        messages: list[list[pb.AccountEvent]] = []
        while sum(map(len, messages)) < count:
            item = await next_item(stream)
            if arrived := events_of(item):
                messages.append(arrived)
        stream.cancel()
    cursors = [int(event.cursor) for message in messages for event in message]
    assert cursors == list(range(start + 1, start + count + 1))
    assert max(map(len, messages)) > 1
    assert len(messages) < count / 2, [len(message) for message in messages]


async def test_a_reader_that_keeps_up_gets_each_event_alone_when_recorded(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub
) -> None:
    """A subscriber allowing batches that reads as fast as events are recorded gets each
    event in a message of its own, before the next one is recorded: nothing waits for a
    batch to fill."""
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(max_events_per_message=100))
    await attached(stream)
    for number in range(20):
        (outcome,) = await service.event_log.append([padded_record(number)])
        item = await next_item(stream)
        while item.HasField("bookmark"):
            item = await next_item(stream)
        assert item.HasField("events"), "a stream that allows batches gets batches"
        public = service.event_log.incarnation.public(outcome.cursor)
        assert [event.cursor for event in item.events.events] == [public]
    stream.cancel()


async def test_streams_sending_the_same_events_send_the_same_bytes() -> None:
    """The frame cache encodes an event once, and hands every stream that sends the same
    events with the same batching and filter the very same frames."""
    events = [
        StoredEvent(cursor, f"evt-{cursor}", "account.updated", "a", "hibob", "o", 0.0, b"")
        for cursor in (7, 8, 9)
    ]
    cache = wire.FrameCache()
    everything, hibob = EventFilter(), EventFilter.of(providers=["hibob"])
    first = cache.frames(events, 100, everything)
    assert cache.frames(list(events), 100, EventFilter()) is first
    assert cache.frames(events, 2, everything) is not first
    assert cache.frames(events, 100, hibob) is not first
    assert cache.encoded(events[1]) is cache.encoded(events[1])
    batch = pb.StreamAccountEventsResponse.FromString(first[0])
    assert [event.cursor for event in batch.events.events] == ["7", "8", "9"]
    singles = cache.frames(events, 1, everything)
    cursors = [pb.StreamAccountEventsResponse.FromString(frame).event.cursor for frame in singles]
    assert cursors == ["7", "8", "9"]


async def test_waits_on_one_watermark_each_keep_their_own_timeout() -> None:
    """Of two waits on a watermark, the shorter times out alone; the other ends when the
    mark is passed (that they share one loop timer: test_performance_mechanisms)."""
    mark = Watermark()
    long = mark.wait_past(0, timeout=60)
    await mark.wait_past(0, timeout=0.01)
    assert not long.done()
    mark.advance(1)
    async with asyncio.timeout(5):
        await long


async def test_a_watermark_on_a_late_uvloop_loop_sets_its_timer_without_error() -> None:
    """uvloop's call_at answers a plain Handle, with no when(), for a time already past
    or under a millisecond away, which happens when the loop runs late: the next wait
    must not ask that handle for its time (a live stream ended INTERNAL when it did)."""
    import time

    import uvloop

    async def late_waits() -> list[bool]:
        mark = Watermark()
        loop = asyncio.get_running_loop()
        # A deadline already past when the wait is set, as a late loop computes one.
        first = mark.wait_past(0, timeout=-0.05)
        assert mark._timer is not None
        assert not isinstance(mark._timer, asyncio.TimerHandle)
        time.sleep(0.03)  # noqa: ASYNC251 - the loop runs late: the timer's tick is past
        later = [mark.wait_past(0, timeout=t) for t in (-0.1, 0.05, 0.0, 0.02)]
        await asyncio.wait_for(asyncio.gather(first, *later), timeout=5)
        assert loop.time() > 0
        return [w.done() for w in (first, *later)]

    # On a loop of its own (the tests' loop is asyncio's), in a thread of its own.
    assert await asyncio.to_thread(uvloop.run, late_waits()) == [True] * 5
