"""What a subscriber follows: events from a start position, filtered, with bookmarks.

Each follower reads the log at its own pace, one bounded batch at a time, so a slow
subscriber holds at most one batch in memory and never delays the writer or anyone else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from service.events.log import EventLog
from service.events.model import Bookmark, CursorOutOfRange, EventFilter, StoredEvent


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where a follower starts: `now`, `earliest`, or `after` a given cursor."""

    kind: Literal["now", "earliest", "after"]
    cursor: int = 0

    @classmethod
    def now(cls) -> StartPosition:
        """Only events recorded from now on."""
        return cls("now")

    @classmethod
    def earliest(cls) -> StartPosition:
        """Every retained event."""
        return cls("earliest")

    @classmethod
    def after(cls, cursor: int) -> StartPosition:
        """Events after `cursor`."""
        return cls("after", cursor)


async def resolve_start(log: EventLog, start: StartPosition) -> int:
    """Turns a start position into the cursor to read after, or raises `CursorOutOfRange`."""
    bounds = await log.bounds(exact=True)
    if start.kind == "now":
        return bounds.latest
    if start.kind == "earliest":
        return bounds.pruned_through
    if start.cursor < bounds.pruned_through or start.cursor > bounds.latest:
        raise CursorOutOfRange(start.cursor, bounds)
    return start.cursor


async def follow(
    log: EventLog,
    after: int,
    event_filter: EventFilter,
    *,
    bookmark_interval: float,
    stop: asyncio.Event | None = None,
    batch_size: int = 256,
) -> AsyncGenerator[list[StoredEvent] | Bookmark, None]:
    """Yields matching events after cursor `after`, forever, in cursor order.

    Events come in lists: the (non-empty) matching events of one read from the log, so a
    subscriber catching up handles a batch per step. The first item is a `Bookmark` of the
    start position. Later, a `Bookmark` with the position read so far is yielded whenever
    `bookmark_interval` seconds pass without anything sent, so idle and filtered
    subscribers can resume exactly and dead connections are noticed. Ends when `stop` is
    set (followed by `log.stop_waits()`, so that waiting followers notice at once). Raises
    `CursorOutOfRange` when retention removes events this follower has not read yet.
    """
    position = after
    match_all = event_filter.is_empty
    # The first message says the stream is attached and where it starts.
    yield Bookmark(position)
    last_sent = time.monotonic()
    while stop is None or not stop.is_set():
        batch = await log.read(position, batch_size)
        bounds = await log.bounds()
        if position < bounds.pruned_through:
            raise CursorOutOfRange(position, bounds)
        matching = batch if match_all else [e for e in batch if event_filter.matches(e)]
        if batch:
            position = batch[-1].cursor
        if matching:
            yield matching
            last_sent = time.monotonic()
        idle_for = time.monotonic() - last_sent
        if idle_for >= bookmark_interval:
            yield Bookmark(position)
            last_sent = time.monotonic()
            idle_for = 0.0
        if len(batch) < batch_size:
            # No extra task races `stop`: the lifecycle calls `log.stop_waits()` after
            # setting it, which ends this wait (a task per idle stream costs memory).
            await log.wait_for_append(position, bookmark_interval - idle_for)
