"""One rate budget for every StackOne call this service makes.

StackOne allows a fixed number of calls per minute per API key, shared by everything the
service does. `RateBudget` spends it: at most `limit` calls in any sliding `window`,
callers' RPCs first, then webhook verification, then reconciliation, with a share of the
limit that background work never takes, so people waiting on a Hub are never starved by
it. A 429 from StackOne pauses the background classes as a whole; callers are not paused
(their own retries honour Retry-After).

```python
async with budget.slot(Priority.VERIFY, timeout=3.0):
    ...  # one HTTP attempt
```

A client of the clients file may have its own share of the callers' calls
(`ClientShare`): while `CALLER_SHARE` names it, a CALLER slot is first taken from that
share, and a client past its calls per minute is refused at once (`ClientBudgetExhausted`)
without waiting in the line the other clients use.

Several replicas spend one budget when a `Lender` (`service.stackone.shared_budget`) is
attached: it sets how many of the limit's slots, and of each client's calls, this replica
may hold (`RateBudget.set_capacity`, `ClientShare.held`), leasing them in blocks, so the
fast path stays local.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from enum import IntEnum
from typing import Any, Protocol

from service.metrics import Metrics
from service.stackone.errors import BudgetExhausted, ClientBudgetExhausted


class Priority(IntEnum):
    """Who a StackOne call is for; lower values are served first."""

    CALLER = 0
    """A gRPC caller's RPC: may use the whole limit, never paused."""
    VERIFY = 1
    """Background verification of a webhook's account."""
    RECONCILE = 2
    """A reconciliation sweep."""


class ClientShare:
    """One client's own StackOne calls: at most `calls_per_minute` started in any window.

    Kept by client name across re-reads of the clients file (a new limit applies to the
    calls already counted). Its calls also take slots of the shared `RateBudget`.
    """

    __slots__ = ("_granted", "_refused", "_starts", "calls_per_minute", "held", "name")

    def __init__(self, name: str, calls_per_minute: int, metrics: Metrics | None = None) -> None:
        self.name = name
        self.calls_per_minute = calls_per_minute
        # The calls this replica may start in a window when replicas share the client's
        # calls (set by the `Lender`); None: all of `calls_per_minute`.
        self.held: int | None = None
        self._starts: deque[float] = deque()
        # Labelled once: `labels()` takes a lock and builds a key on every call.
        self._granted: Any = None if metrics is None else metrics.client_calls.labels(name, "ok")
        self._refused: Any = (
            None if metrics is None else metrics.client_calls.labels(name, "refused")
        )

    def __repr__(self) -> str:
        return f"ClientShare({self.name!r}, calls_per_minute={self.calls_per_minute})"

    @property
    def allowed(self) -> int:
        """Calls this replica may start in any window."""
        held = self.held
        return self.calls_per_minute if held is None else min(held, self.calls_per_minute)

    def started(self, now: float, window: float) -> int:
        """Calls started in the `window` up to `now`."""
        starts = self._starts
        while starts and starts[0] <= now - window:
            starts.popleft()
        return len(starts)

    def take(self, now: float, window: float) -> None:
        """Counts one call started `now`.

        Raises:
            ClientBudgetExhausted: the client started its calls of the last `window`.
        """
        starts = self._starts
        allowed = self.allowed
        if self.started(now, window) >= allowed:
            if self._refused is not None:
                self._refused.inc()
            # With no call of its own to wait for, a replica waits for its next lease.
            free_in = starts[len(starts) - allowed] + window - now if allowed else window
            raise ClientBudgetExhausted(self.name, self.calls_per_minute, free_in)
        starts.append(now)
        if self._granted is not None:
            self._granted.inc()

    def give_back(self) -> None:
        """Uncounts the newest call, which never reached StackOne."""
        if self._starts:
            self._starts.pop()


CALLER_SHARE: ContextVar[ClientShare | None] = ContextVar("caller_share", default=None)
"""The share of the client calling the RPC this task serves; None: no share of its own."""


class Lender(Protocol):
    """Where a budget shared by replicas gets more of the limit's slots (the role
    `service.stackone.shared_budget.SharedBudget` plays)."""

    def short(self) -> None:
        """Calls wait for a slot: lease more soon (never waits; called often)."""

    async def lease_share(self, share: ClientShare) -> None:
        """Leases more of `share`'s client's calls for this replica, if it can."""


class RateBudget:
    """At most `limit` StackOne calls in any sliding `window` seconds, by priority.

    A slot is taken when a call starts and held until `window` seconds after the call
    completes. StackOne counts a call when it arrives, which is somewhere between our
    start and our completion; holding the slot a full window past completion means every
    arrival StackOne can see in one of its windows still holds a slot of ours at that
    window's end, so StackOne never counts more than `limit` (counting from our start
    could: a slow call may arrive late, inside a later window).

    Background classes (VERIFY, RECONCILE) take a slot only while fewer than
    `background_limit` are in use, so callers always have `limit - background_limit`
    left. Waiters are served CALLER, then VERIFY, then RECONCILE, first come first
    served within a class. Nothing polls: one timer wakes the queue exactly when the slot
    (or the end of a pause) the first waiter needs comes.

    Args:
        limit: calls allowed in any `window`.
        window: seconds of StackOne's sliding window.
        caller_reserve: share of `limit` background work never uses (rounded; background
            always keeps at least one slot, or it would never run).
        clock: seconds, advancing like `asyncio`'s loop clock (timers are set from it).
        metrics: where slots granted, waits and StackOne's 429s are counted.
    """

    def __init__(
        self,
        limit: int,
        *,
        window: float = 60.0,
        caller_reserve: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if window <= 0:
            raise ValueError(f"window must be positive, not {window}")
        if not 0 <= caller_reserve < 1:
            raise ValueError(f"caller_reserve must be in [0, 1), not {caller_reserve}")
        self.limit = limit
        self.window = window
        self.background_limit = max(1, limit - round(limit * caller_reserve))
        self._clock = clock
        self._metrics = metrics
        self._in_flight = 0
        # Completion + window of finished calls; the clock never goes back and the window
        # is fixed, so appending keeps it sorted and the earliest to free is first.
        self._expiries: deque[float] = deque()
        self._paused_until = -math.inf
        self._queues: dict[Priority, deque[asyncio.Future[None]]] = {p: deque() for p in Priority}
        self._granted = dict.fromkeys(Priority, 0)
        self._timer: asyncio.TimerHandle | None = None
        # The slots this replica may hold, all and background's; a `Lender` sets them.
        self._capacity = limit
        self._background_capacity = self.background_limit
        self.lender: Lender | None = None

    def __repr__(self) -> str:
        return (
            f"RateBudget(limit={self.limit}, window={self.window:g}, "
            f"background_limit={self.background_limit}, in_use={self.in_use})"
        )

    # --- Figures (for metrics and tests) ---

    @property
    def in_use(self) -> int:
        """Slots held now: calls in flight plus calls completed less than a window ago."""
        self._expire(self._clock())
        return self._in_flight + len(self._expiries)

    @property
    def paused_until(self) -> float | None:
        """Clock time until which background classes are paused, or None if they are not."""
        return self._paused_until if self._paused_until > self._clock() else None

    @property
    def granted(self) -> dict[Priority, int]:
        """Slots granted so far, by class."""
        return dict(self._granted)

    @property
    def waiting(self) -> dict[Priority, int]:
        """Calls waiting for a slot now, by class."""
        return {priority: len(queue) for priority, queue in self._queues.items()}

    def now(self) -> float:
        """The budget's clock."""
        return self._clock()

    @property
    def capacity(self) -> tuple[int, int]:
        """The slots this replica may hold: all of them, and those background may use."""
        return self._capacity, self._background_capacity

    def set_capacity(self, held: int, background: int) -> None:
        """Lets this replica hold `held` slots, `background` of them for background work
        (a `Lender`'s lease); waiters that now fit are granted."""
        self._capacity = held
        self._background_capacity = min(background, held)
        self._dispatch()

    # --- Spending ---

    @asynccontextmanager
    async def slot(self, priority: Priority, timeout: float | None = None) -> AsyncIterator[None]:
        """Holds one slot for the block (one HTTP attempt): `acquire`, then `release`."""
        await self.acquire(priority, timeout)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, priority: Priority, timeout: float | None = None) -> None:
        """Takes a slot, waiting in line for one at most `timeout` seconds (None: no bound).

        Raises:
            BudgetExhausted: no slot within `timeout`, with `retry_after` the seconds
                until one could free. Raised at once when no slot can free in time.
            ClientBudgetExhausted: a CALLER whose client's own share is spent, at once.
        """
        share = CALLER_SHARE.get() if priority == Priority.CALLER else None
        if share is not None:
            await self._take_share(share)
        started = self._clock()
        self._expire(started)
        if not self._anyone_ahead(priority) and self._open(priority, started):
            self._in_flight += 1
            self._count(priority, 0.0)
            return
        try:
            await self._wait(priority, timeout, started)
        except BaseException:
            if share is not None:
                share.give_back()  # no slot, so no call: it does not count against the client
            raise

    async def _take_share(self, share: ClientShare) -> None:
        """Counts a call against `share`, leasing more of it first when replicas share it."""
        lender = self.lender
        if lender is not None and (
            share.held is None or share.started(self._clock(), self.window) >= share.allowed
        ):
            await lender.lease_share(share)
        share.take(self._clock(), self.window)

    async def _wait(self, priority: Priority, timeout: float | None, started: float) -> None:
        """Waits in line for a slot (none was free at `started`)."""
        free_in = self._free_at(priority, started) - started
        # A lender may bring a slot any moment: wait for it rather than refuse now.
        if timeout is not None and free_in > timeout and self.lender is None:
            # Not even the first slot to free comes in time: say so now, not at the deadline.
            self._count(priority, 0.0, granted=False)
            raise BudgetExhausted(free_in)
        waiter = asyncio.get_running_loop().create_future()
        self._queues[priority].append(waiter)
        self._dispatch()
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            if not self._granted_to(waiter, priority):
                now = self._clock()
                self._count(priority, now - started, granted=False)
                raise BudgetExhausted(max(0.0, self._free_at(priority, now) - now)) from None
        except asyncio.CancelledError:
            if self._granted_to(waiter, priority):
                self._give_back()  # granted as we were cancelled: never used, free it now
            raise
        self._count(priority, self._clock() - started)

    def release(self) -> None:
        """Ends the call of an acquired slot; the slot frees `window` seconds from now."""
        now = self._clock()
        self._in_flight -= 1
        self._expiries.append(now + self.window)
        self._dispatch()

    def pause_background(self, seconds: float) -> None:
        """Holds every VERIFY and RECONCILE call for `seconds` (a pause never shortens)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._dispatch()

    def upstream_rate_limited(self, retry_after: float | None) -> None:
        """Records a 429 from StackOne: counts it and pauses background for its Retry-After.

        Without a usable Retry-After the pause is one second.
        """
        if self._metrics is not None:
            self._metrics.upstream_rate_limited.inc()
        self.pause_background(retry_after or 1.0)

    # --- Internals ---

    def _expire(self, now: float) -> None:
        while self._expiries and self._expiries[0] <= now:
            self._expiries.popleft()

    def _threshold(self, priority: Priority) -> int:
        if priority == Priority.CALLER:
            return min(self.limit, self._capacity)
        return min(self.background_limit, self._background_capacity)

    def _open(self, priority: Priority, now: float) -> bool:
        """True when a call of `priority` may take a slot now (after `_expire(now)`)."""
        if priority != Priority.CALLER and now < self._paused_until:
            return False
        return self._in_flight + len(self._expiries) < self._threshold(priority)

    def _anyone_ahead(self, priority: Priority) -> bool:
        return any(self._queues[p] for p in Priority if p <= priority)

    def _exact_free_at(self, priority: Priority, now: float) -> float | None:
        """When `priority` could next take a slot if nothing else happens, or None when
        that waits on calls in flight completing (then `release` wakes the queue)."""
        excess = self._in_flight + len(self._expiries) - self._threshold(priority)
        if excess < 0:
            at = now
        elif excess < len(self._expiries):
            at = self._expiries[excess]  # once excess + 1 of them have expired
        else:
            return None
        return at if priority == Priority.CALLER else max(at, self._paused_until)

    def _free_at(self, priority: Priority, now: float) -> float:
        """The earliest `priority` could take a slot: a call in flight that completed now
        would free its slot a window from now."""
        exact = self._exact_free_at(priority, now)
        if exact is not None:
            return exact
        at = now + self.window
        return at if priority == Priority.CALLER else max(at, self._paused_until)

    def _dispatch(self) -> None:
        """Grants slots to waiters in priority order, then sets the timer for the next."""
        now = self._clock()
        self._expire(now)
        first_waiting: Priority | None = None
        for priority in Priority:
            queue = self._queues[priority]
            while queue and self._open(priority, now):
                waiter = queue.popleft()
                if not waiter.done():  # a waiter cancelled by its timeout leaves by itself
                    self._in_flight += 1
                    waiter.set_result(None)
            if queue:
                # Lower classes face the same pause and a lower threshold: they wait too.
                first_waiting = priority
                break
        if first_waiting is not None and self.lender is not None:
            self.lender.short()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if first_waiting is not None:
            at = self._exact_free_at(first_waiting, now)
            if at is not None:
                self._timer = asyncio.get_running_loop().call_later(
                    max(0.0, at - now), self._dispatch
                )

    def _granted_to(self, waiter: asyncio.Future[None], priority: Priority) -> bool:
        """True if `waiter` was granted a slot; otherwise takes it out of the line."""
        if waiter.done() and not waiter.cancelled():
            return True
        waiter.cancel()
        if waiter in self._queues[priority]:  # `_dispatch` may have dropped it already
            self._queues[priority].remove(waiter)
        self._dispatch()  # the first in line may have changed: re-aim the timer
        return False

    def _give_back(self) -> None:
        self._in_flight -= 1
        self._dispatch()

    def _count(self, priority: Priority, waited: float, *, granted: bool = True) -> None:
        if granted:
            self._granted[priority] += 1
        if self._metrics is not None:
            label = priority.name.lower()
            if granted:
                self._metrics.budget_calls.labels(label).inc()
            self._metrics.budget_wait_seconds.labels(label).observe(waited)
