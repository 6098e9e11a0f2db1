"""What a subscriber follows: events from a start position, filtered, with bookmarks.

Each follower reads the log at its own pace, one bounded batch at a time, so a slow
subscriber holds at most one batch in memory and never delays the writer or anyone else.

A filtered subscriber's view of its accounts equals a fresh snapshot with its filters at
every bookmark: an account whose event takes it out of the filters (a new owner or
provider) is sent that event marked `leaves_filter`, as Kubernetes sends an object that
stops matching a filtered watch as a removal; a scoped caller is told nothing of an owner
it does not act for (before or after the event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError

from service.events.cursors import SEQUENCE_BITS, Cursor
from service.events.log import Log
from service.events.model import Bookmark, CursorOutOfRange, EventFilter, StoredEvent
from service.owners import OwnerScope
from stackone_connect.v1 import stackone_connect_pb2 as pb


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where a follower starts: `now`, `earliest`, `after` a given cursor, or from a
    `snapshot` of the registry (its accounts first, then events after its cursor)."""

    kind: Literal["now", "earliest", "after", "snapshot"]
    cursor: int = 0
    tag: int | None = None  # the incarnation a client's cursor names (None: this log's)

    @classmethod
    def now(cls) -> StartPosition:
        """Only events recorded from now on."""
        return cls("now")

    @classmethod
    def earliest(cls) -> StartPosition:
        """Every retained event."""
        return cls("earliest")

    @classmethod
    def snapshot(cls) -> StartPosition:
        """The registry's accounts, then events after the cursor they reflect."""
        return cls("snapshot")

    @classmethod
    def after(cls, cursor: int, tag: int | None = None) -> StartPosition:
        """Events after sequence `cursor` (of the incarnation `tag`, when a client says)."""
        return cls("after", cursor, tag)


async def resolve_start(log: Log, start: StartPosition) -> int:
    """Turns a start position into the cursor to read after, or raises `CursorOutOfRange`."""
    bounds = await log.bounds(exact=True)
    if start.kind in ("now", "snapshot"):
        return bounds.latest
    if start.kind == "earliest":
        return bounds.pruned_through
    incarnation = log.incarnation
    if start.tag is not None and not incarnation.admits(Cursor(start.tag, start.cursor)):
        public = str(start.tag << SEQUENCE_BITS | start.cursor)
        raise CursorOutOfRange.of_another_log(public, bounds, incarnation)
    if start.cursor < bounds.pruned_through or start.cursor > bounds.latest:
        raise CursorOutOfRange(start.cursor, bounds, incarnation)
    return start.cursor


class Feed:
    """Matching events after a cursor, forever, in cursor order: an async iterator.

    Each item is either the (non-empty) list of matching events of one read from the log,
    or a `Bookmark`. The first item is a `Bookmark` of the start position; later, a
    `Bookmark` with the position read so far comes whenever `bookmark_interval` seconds
    pass without anything sent, so idle and filtered subscribers can resume exactly and
    dead connections are noticed. Iteration ends when `stop` is set (followed by
    `log.stop_waits()`, so that waiting feeds notice at once), or at once when the feed is
    `interrupt`ed. Raises `CursorOutOfRange` when retention removes events this feed has
    not read yet.

    The log is read when the next item is asked for, so everything that matches and is
    ready then comes in one list (up to `batch_size` read): a subscriber that keeps up
    gets each event as soon as it is recorded, and one that fell behind gets what it
    missed together, with no wait added in either case. A class rather than an async
    generator: one per open stream, and an event loop keeps a weak reference to every
    live async generator besides its frame.
    """

    __slots__ = ("_batch_size", "_filter", "_interrupted", "_interval", "_last_sent", "_log",
                 "_position", "_started", "_stop", "_up_to_date", "_waiting")  # fmt: skip

    def __init__(
        self,
        log: Log,
        after: int,
        event_filter: EventFilter,
        *,
        bookmark_interval: float,
        stop: asyncio.Event | None = None,
        batch_size: int = 256,
    ) -> None:
        self._log = log
        self._position = after
        self._filter = None if event_filter.is_empty else event_filter
        self._interval = bookmark_interval
        self._stop = stop
        self._batch_size = batch_size
        self._last_sent = 0.0
        self._started = False
        self._up_to_date = False  # the last read found less than a batch: wait first
        self._waiting: asyncio.Future[None] | None = None  # the wait `interrupt` ends
        self._interrupted = False

    def __aiter__(self) -> Feed:
        return self

    @property
    def position(self) -> int:
        """The cursor read up to: each matching event up to it was returned."""
        return self._position

    @property
    def interrupted(self) -> bool:
        """True once `interrupt` was called: the feed returns nothing more."""
        return self._interrupted

    def interrupt(self) -> None:
        """Ends the iteration now, from outside (its subscriber may no longer read what
        it follows): a wait in progress ends, and nothing read after this is returned."""
        self._interrupted = True
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    async def __anext__(self) -> list[StoredEvent] | Bookmark:
        """The next events or bookmark."""
        if not self._started and not self._interrupted:
            # The first message says the stream is attached and where it starts.
            self._started = True
            self._last_sent = time.monotonic()
            return Bookmark(self._position)
        log = self._log
        while (self._stop is None or not self._stop.is_set()) and not self._interrupted:
            if self._up_to_date:
                idle_for = time.monotonic() - self._last_sent
                # No extra task races `stop`: the lifecycle calls `log.stop_waits()` after
                # setting it, which ends this wait (a task per idle stream costs memory);
                # `interrupt` ends it through the future itself.
                waiting = log.wait_for_append(self._position, self._interval - idle_for)
                self._waiting = waiting if isinstance(waiting, asyncio.Future) else None
                await waiting
                self._waiting = None
            batch = await log.read(self._position, self._batch_size)
            bounds = await log.bounds()
            if self.interrupted:  # while reading: what was read is no longer this feed's
                break
            if self._position < bounds.pruned_through:
                raise CursorOutOfRange(self._position, bounds, log.incarnation)
            self._up_to_date = len(batch) < self._batch_size
            event_filter = self._filter
            matching = batch if event_filter is None else sent_of(batch, event_filter)
            if batch:
                self._position = batch[-1].cursor
            if matching:
                self._last_sent = time.monotonic()
                return matching
            if time.monotonic() - self._last_sent >= self._interval:
                self._last_sent = time.monotonic()
                return Bookmark(self._position)
        raise StopAsyncIteration


@dataclass(frozen=True, slots=True)
class Restated(StoredEvent):
    """A stored event in the form one stream sends it (marked as leaving its filters, or
    without what its caller may not see): not the bytes every stream shares."""


def sent_of(batch: Sequence[StoredEvent], event_filter: EventFilter) -> list[StoredEvent]:
    """What a stream with `event_filter` sends of `batch`: the matching events, and the
    events that take a matching account out of the filter, as departures."""
    if not event_filter.follows_state:  # account ids and types: an account never leaves
        return [event for event in batch if event_filter.matches(event)]
    scope = event_filter.owners
    sent: list[StoredEvent] = []
    for event in batch:
        if event_filter.matches(event):
            sent.append(event if scope is None else _within(scope, event))
        elif (departure := _departure(event, event_filter)) is not None:
            sent.append(departure)
    return sent


def _message(event: StoredEvent) -> pb.AccountEvent | None:
    try:
        return pb.AccountEvent.FromString(event.body)
    except DecodeError:  # the log keeps bodies opaque; such an event has no previous state
        return None


def _restated(event: StoredEvent, message: pb.AccountEvent) -> Restated:
    return Restated(
        event.cursor,
        event.event_id,
        event.type,
        event.account_id,
        message.account.provider,
        message.account.origin_owner_id,
        event.recorded_at,
        message.SerializeToString(),
    )


def _within(scope: OwnerScope, event: StoredEvent) -> StoredEvent:
    """`event` without its account's previous state when another customer owned it then
    (it came to the caller's customer from one the caller does not act for)."""
    message = _message(event)
    if message is None or not message.previous_origin_owner_id:
        return event  # a first event: no one owned it before
    if scope.allows(message.previous_origin_owner_id):
        return event
    for name in ("previous_status", "previous_raw_status", "previous_origin_owner_id",
                 "previous_provider"):  # fmt: skip
        message.ClearField(name)
    return _restated(event, message)


def _departure(event: StoredEvent, event_filter: EventFilter) -> Restated | None:
    """`event` marked `leaves_filter` when its account matched the filter before it; only
    its account's id and previous state when the caller may not see the new owner."""
    message = _message(event)
    if message is None or not (message.previous_origin_owner_id or message.previous_provider):
        return None  # a first event, or one recorded before the previous state was
    if not event_filter.matched(event, message.previous_provider, message.previous_origin_owner_id):
        return None
    scope = event_filter.owners
    if scope is not None and not scope.allows(event.origin_owner_id):
        message = _previous_only(message)
    message.leaves_filter = True
    return _restated(event, message)


def _previous_only(message: pb.AccountEvent) -> pb.AccountEvent:
    """What a scoped caller is told of its account's move to another customer: the
    account's id and its state before, nothing of the new owner."""
    kept = pb.AccountEvent(
        event_id=message.event_id,
        type=message.type,
        account=pb.Account(id=message.account.id),
        previous_status=message.previous_status,
        previous_raw_status=message.previous_raw_status,
        previous_origin_owner_id=message.previous_origin_owner_id,
        previous_provider=message.previous_provider,
    )
    for name in ("occurred_at", "received_at"):
        if message.HasField(name):
            getattr(kept, name).CopyFrom(getattr(message, name))
    return kept
