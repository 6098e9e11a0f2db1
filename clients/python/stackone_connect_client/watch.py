"""A stream of account events that resumes by itself: after a lost connection, a server's
shutdown, a switch to another replica, a restart of the subscriber, and a cursor older
than the service retains.

Each case, and what `EventWatch` does about it:

| what happened                          | what the watch does                              |
|----------------------------------------|--------------------------------------------------|
| connection lost, UNAVAILABLE, ...      | waits (jittered backoff, or the server's         |
|                                        | RetryInfo) and resumes after the last cursor     |
| server shutting down (SERVER_DRAINING) | resumes at once after its `resume_after_cursor`  |
| cursor older than retention            | yields `Resynced`, then the current state of     |
| (OUT_OF_RANGE)                         | every matching account, `SnapshotEnd`, events    |
| subscriber restarted                   | resumes after the cursor its `CursorStore` holds |
| bad request, no permission, ...        | raises the `grpc.aio.AioRpcError`                |
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from stackone_connect_client.cursors import CursorStore

Start = Literal["now", "earliest", "snapshot"]
# Codes after which reconnecting cannot help: the request or the credentials must change.
FINAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,  # (but for a cursor, which resyncs instead)
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


@dataclass(frozen=True)
class Resynced:
    """Sent instead of a silent jump: the cursor to resume after (`stale_cursor`) is older
    than the service retains (its earliest is `earliest_cursor`), so the events between
    them are gone. The current state of every matching account follows, as `pb.Account`
    items, then `SnapshotEnd`, then the events after it: rebuild from those accounts
    whatever you derived from the missed events."""

    stale_cursor: str
    earliest_cursor: str
    message: str


@dataclass(frozen=True)
class SnapshotEnd:
    """Every matching account of the initial state was sent, as of `cursor`; the events
    after it follow."""

    cursor: str


# What a watch yields: events, and for a snapshot (asked for, or after `Resynced`) the
# accounts of its initial state then `SnapshotEnd`; bookmarks only when asked for.
WatchItem = pb.AccountEvent | pb.Account | Resynced | SnapshotEnd | pb.Bookmark


@dataclass(frozen=True)
class Retry:
    """Why a watch reconnects and when: given to `on_retry` before the wait, for logs."""

    code: grpc.StatusCode
    details: str
    delay: float
    resume_after: str | None  # None: from the start asked for
    snapshot: bool  # asking for a snapshot (again): no cursor to resume after yet
    draining: bool  # the server is shutting down and said where to resume


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: a wait drawn between 0 and `first * 2**n`
    (at most `cap`) after the n-th failure in a row, so that the subscribers of a server
    that went away do not all come back at the same instant."""

    first: float = 0.1
    cap: float = 5.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (0: the first)."""
        return random.uniform(0, min(self.cap, self.first * 2 ** min(failures, 32)))


@dataclass(frozen=True)
class _Failure:
    """The `google.rpc` details of a failed stream that tell a watch what to do next."""

    reason: str = ""
    metadata: Mapping[str, str] | None = None
    retry_delay: float | None = None

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> _Failure:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        if status is None:
            return cls()
        found: dict[str, Any] = {}
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                found |= {"reason": info.reason, "metadata": dict(info.metadata)}
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                found["retry_delay"] = retry.retry_delay.ToNanoseconds() / 1e9
        return cls(**found)

    def get(self, key: str) -> str:
        return (self.metadata or {}).get(key, "")


class EventWatch:
    """Follows `StreamAccountEvents` for as long as it is iterated; see the module's table.

    Delivery is at least once and in cursor order, and never skips: an item counts as
    processed when the application asks for the next one; only then is its cursor saved
    and resumed after (`cursor` holds it). Build it with `Client.watch`; iterate it once.
    """

    def __init__(
        self,
        stub: pb_grpc.ConnectServiceAsyncStub,
        filters: pb.StreamAccountEventsRequest,
        *,
        metadata: tuple[tuple[str, str], ...],
        start: Start,
        after_cursor: str | None,
        cursor_store: CursorStore | None,
        backoff: Backoff,
        on_retry: Callable[[Retry], None] | None,
        bookmarks: bool = False,
    ) -> None:
        self._stub = stub
        self._bookmarks = bookmarks
        self._filters = filters
        self._metadata = metadata
        self._store = cursor_store
        self._backoff = backoff
        self._on_retry = on_retry
        self._start: Start = start
        # The cursor to resume after; None until the first stream tells (but for `after`).
        self.cursor: str | None = after_cursor
        # A snapshot is wanted until its `initial_state_end` bookmark arrives.
        self._snapshot = start == "snapshot" and after_cursor is None

    def __aiter__(self) -> AsyncIterator[WatchItem]:
        return self._items()

    async def _items(self) -> AsyncIterator[WatchItem]:
        if self._store is not None and (stored := await self._store.load()):
            self.cursor, self._snapshot = stored, False
        store, failures = self._store, 0
        while True:
            call = self._stub.StreamAccountEvents(self._request(), metadata=self._metadata)
            error: grpc.aio.AioRpcError | None = None
            try:
                async for response in call:
                    failures = 0
                    kind = response.WhichOneof("item")
                    if kind != "events" and kind != "event":
                        async for item in self._not_events(response, kind):
                            yield item
                        continue
                    # The hot path, inline: an event is processed once the next is asked for.
                    for event in response.events.events if kind == "events" else (response.event,):
                        yield event
                        self.cursor = event.cursor
                        if store is not None:
                            await store.save(event.cursor)
            except grpc.aio.AioRpcError as failed:
                error = failed
            finally:
                call.cancel()
            if error is not None and self._resyncs(error):
                earliest = _Failure.of(error).get("earliest_cursor")
                yield Resynced(self.cursor or "", earliest, error.details() or "")
                continue
            delay = await self._before_retry(error, failures)
            failures += 1
            await asyncio.sleep(delay)

    async def _not_events(
        self, response: pb.StreamAccountEventsResponse, kind: str | None
    ) -> AsyncIterator[WatchItem]:
        """The items of a message of bookmarks or snapshot accounts."""
        if kind == "bookmark":
            bookmark = response.bookmark
            if bookmark.initial_state_end:
                self._snapshot = False
                yield SnapshotEnd(bookmark.cursor)
                await self._processed(bookmark.cursor)
            elif not self._snapshot:
                if self._bookmarks:
                    yield bookmark
                await self._processed(bookmark.cursor)  # past the events filtered out
        elif kind == "accounts":
            for account in response.accounts.accounts:
                yield account
        elif kind == "account":
            yield response.account

    async def _processed(self, cursor: str) -> None:
        self.cursor = cursor
        if self._store is not None:
            await self._store.save(cursor)

    def _request(self) -> pb.StreamAccountEventsRequest:
        request = pb.StreamAccountEventsRequest()
        request.CopyFrom(self._filters)
        if self._snapshot:
            request.from_snapshot.SetInParent()
        elif self.cursor is not None:
            request.after_cursor = self.cursor
        elif self._start == "earliest":
            request.from_earliest.SetInParent()
        else:
            request.from_now.SetInParent()
        return request

    def _resyncs(self, error: grpc.aio.AioRpcError) -> bool:
        """Whether `error` says the cursor is past retention: a snapshot is wanted next."""
        if error.code() != grpc.StatusCode.OUT_OF_RANGE or self._snapshot or self.cursor is None:
            return False
        self._snapshot = True
        return True

    async def _before_retry(self, error: grpc.aio.AioRpcError | None, failures: int) -> float:
        """The wait before the next stream; raises `error` when retrying cannot help."""
        if error is not None and error.code() in FINAL_CODES:
            raise error
        failure = _Failure.of(error) if error is not None else _Failure()
        resume = failure.get("resume_after_cursor")
        draining = failure.reason == "SERVER_DRAINING" and bool(resume) and not self._snapshot
        if draining:
            await self._processed(resume)
            delay = self._backoff.delay(0)  # at once, give or take the herd's spread
        elif failure.retry_delay is not None:
            delay = failure.retry_delay * random.uniform(1.0, 1.2)
        else:
            delay = self._backoff.delay(failures)
        if self._on_retry is not None:
            code = grpc.StatusCode.OK if error is None else error.code()
            details = "the stream ended" if error is None else error.details() or ""
            resume_after = None if self._snapshot else self.cursor
            self._on_retry(Retry(code, details, delay, resume_after, self._snapshot, draining))
        return delay
