"""The newest events of a log, kept in memory for every follower in this process.

Both backends publish what they append (or learn of) here. The many streams that follow
the head of the log then share one copy instead of each querying storage, and wait here
for the next event.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
from collections.abc import Sequence

from service.events.model import StoredEvent

DEFAULT_TAIL_BYTES = 4 << 20  # a few MiB of the newest events, shared by every follower
_TICK = 0.01  # seconds: waits that time out within the same tick share a list
_TIMER_SLACK = 0.002  # seconds a loop timer may fire early (uvloop's are in whole ms)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Watermark:
    """A number that only grows, and the coroutines waiting for it to pass a mark.

    Every waiter is a bare future, and their timeouts share one loop timer: deadlines are
    rounded up to a `_TICK`, waiters with the same tick share a list, and the timer is set
    for the earliest tick. With thousands of idle streams this costs measurably less, in
    memory and in time to wake them all, than asyncio.Event plus asyncio.timeout, or a
    timer per waiter (a loop timer is a libuv handle under uvloop).
    """

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._ticks: list[int] = []  # a heap of the ticks in `_waiting`
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}  # by their deadline's tick
        # The timer and the tick it was set for: uvloop's call_at returns a plain Handle,
        # with no when(), for a time already past or under a millisecond away.
        self._timer: asyncio.Handle | None = None
        self._timer_tick = 0
        self._waits_stopped = False

    def advance(self, value: int) -> None:
        """Raises the mark to `value` (if higher) and wakes every waiter."""
        if value > self.value:
            self.value = value
            self.wake_waiters()

    def wait_past(self, mark: int, timeout: float) -> asyncio.Future[None]:
        """A future done once the value exceeds `mark`, or after `timeout` seconds (rounded
        up to a `_TICK`).

        A bare future to await, not a coroutine: one frame less per waiting stream. A
        cancelled waiter stays listed until the next wake or its deadline (harmless).
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self.value > mark or self._waits_stopped:
            waiter.set_result(None)
            return waiter
        tick = math.ceil((loop.time() + timeout) / _TICK)
        same_tick = self._waiting.get(tick)
        if same_tick is None:
            same_tick = self._waiting[tick] = []
            heapq.heappush(self._ticks, tick)
            if self._timer is None or tick < self._timer_tick:
                self._set_timer(loop, tick)
        same_tick.append(waiter)
        return waiter

    def _set_timer(self, loop: asyncio.AbstractEventLoop, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(tick * _TICK, self._expire, loop)
        self._timer_tick = tick

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wakes the waiters whose deadline passed; sets the timer for the next ones."""
        self._timer = None
        now = loop.time() + _TIMER_SLACK
        while self._ticks and self._ticks[0] * _TICK <= now:
            for waiter in self._waiting.pop(heapq.heappop(self._ticks)):
                _wake(waiter)
        if self._ticks:
            self._set_timer(loop, self._ticks[0])

    def stop_waits(self) -> None:
        """Ends every current and later `wait_past` at once (the server is draining)."""
        self._waits_stopped = True
        self.wake_waiters()

    def wake_waiters(self) -> None:
        """Ends every current `wait_past`."""
        waiting, self._waiting, self._ticks = self._waiting, {}, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiters in waiting.values():
            for waiter in waiters:
                _wake(waiter)


class Tail:
    """Every event with a cursor above `floor`, oldest first, bounded by their bytes."""

    def __init__(self, budget_bytes: int) -> None:
        self._latest = Watermark()  # the newest cursor published
        self._floor = 0
        self._events: list[StoredEvent] = []
        self._cursors: list[int] = []  # of `_events`, for a bisect with no key function
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
        self._cursors.extend(event.cursor for event in fresh)
        self._bytes += sum(len(event.body) for event in fresh)
        if self._bytes > 2 * self._budget:
            # Trimmed in bulk, down to the budget, so the cost is amortised over appends.
            dropped = 0
            while self._bytes > self._budget:
                self._bytes -= len(self._events[dropped].body)
                dropped += 1
            self._floor = self._events[dropped - 1].cursor
            del self._events[:dropped]
            del self._cursors[:dropped]
        self._latest.advance(fresh[-1].cursor)

    def read(self, after: int, limit: int) -> list[StoredEvent] | None:
        """Up to `limit` events after `after`; None when they are older than the tail."""
        if after >= self.latest:
            return []
        if after >= self._floor and self._events:
            start = bisect.bisect_right(self._cursors, after)
            return self._events[start : start + limit]
        return None

    def prune(self, through: int) -> None:
        """Drops the events retention removed, up to cursor `through`."""
        self._events = [event for event in self._events if event.cursor > through]
        self._cursors = [event.cursor for event in self._events]
        self._bytes = sum(len(event.body) for event in self._events)
        self._floor = max(self._floor, through)

    def wait_for_append(self, after: int, timeout: float) -> asyncio.Future[None]:
        """A future done once an event past `after` is published, or after `timeout`
        seconds."""
        return self._latest.wait_past(after, timeout)

    def stop_waits(self) -> None:
        """Ends every current and later `wait_for_append` at once (the server is draining)."""
        self._latest.stop_waits()

    def wake_waiters(self) -> None:
        """Ends every current `wait_for_append`."""
        self._latest.wake_waiters()
