"""The newest events of a log, kept in memory for every follower in this process.

Both backends publish what they append (or learn of) here. The many streams that follow
the head of the log then share one copy instead of each querying storage, and wait here
for the next event.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence

from service.events.model import StoredEvent

DEFAULT_TAIL_BYTES = 4 << 20  # a few MiB of the newest events, shared by every follower


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Watermark:
    """A number that only grows, and the coroutines waiting for it to pass a mark."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._waiters: set[asyncio.Future[None]] = set()
        self._waits_stopped = False

    def advance(self, value: int) -> None:
        """Raises the mark to `value` (if higher) and wakes every waiter."""
        if value > self.value:
            self.value = value
            self.wake_waiters()

    async def wait_past(self, mark: int, timeout: float) -> None:
        """Returns once the value exceeds `mark`, or after `timeout` seconds."""
        if self.value > mark or self._waits_stopped:
            return
        # A bare future and timer per wait: with thousands of idle streams, waking each
        # costs measurably less than asyncio.Event plus asyncio.timeout.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)  # gone already unless the timer woke it

    def stop_waits(self) -> None:
        """Ends every current and later `wait_past` at once (the server is draining)."""
        self._waits_stopped = True
        self.wake_waiters()

    def wake_waiters(self) -> None:
        """Ends every current `wait_past`."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            _wake(waiter)


class Tail:
    """Every event with a cursor above `floor`, oldest first, bounded by their bytes."""

    def __init__(self, budget_bytes: int) -> None:
        self._latest = Watermark()  # the newest cursor published
        self._floor = 0
        self._events: list[StoredEvent] = []
        self._bytes = 0
        self._budget = budget_bytes

    @property
    def latest(self) -> int:
        """The newest cursor published."""
        return self._latest.value

    def start_at(self, latest: int) -> None:
        """Starts an empty tail after `latest`, the newest cursor already in storage."""
        self._latest.value = self._floor = latest

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """Adds the events newer than `latest` and wakes every waiting follower."""
        fresh = [event for event in events if event.cursor > self.latest]
        if not fresh:
            return
        self._events.extend(fresh)
        self._bytes += sum(len(event.body) for event in fresh)
        if self._bytes > 2 * self._budget:
            # Trimmed in bulk, down to the budget, so the cost is amortised over appends.
            dropped = 0
            while self._bytes > self._budget:
                self._bytes -= len(self._events[dropped].body)
                dropped += 1
            self._floor = self._events[dropped - 1].cursor
            del self._events[:dropped]
        self._latest.advance(fresh[-1].cursor)

    def read(self, after: int, limit: int) -> list[StoredEvent] | None:
        """Up to `limit` events after `after`; None when they are older than the tail."""
        if after >= self.latest:
            return []
        if after >= self._floor and self._events:
            start = bisect.bisect_right(self._events, after, key=lambda event: event.cursor)
            return self._events[start : start + limit]
        return None

    def prune(self, through: int) -> None:
        """Drops the events retention removed, up to cursor `through`."""
        self._events = [event for event in self._events if event.cursor > through]
        self._bytes = sum(len(event.body) for event in self._events)
        self._floor = max(self._floor, through)

    async def wait_for_append(self, after: int, timeout: float) -> None:
        """Returns once an event past `after` is published, or after `timeout` seconds."""
        await self._latest.wait_past(after, timeout)

    def stop_waits(self) -> None:
        """Ends every current and later `wait_for_append` at once (the server is draining)."""
        self._latest.stop_waits()

    def wake_waiters(self) -> None:
        """Ends every current `wait_for_append`."""
        self._latest.wake_waiters()
