"""One subscription's dispatcher: reads the log from the subscription's position and hands
each account's events to one attached consumer at a time, in cursor order.

The next event of an account goes out only once the previous one is acknowledged or
parked; other accounts proceed in parallel, each consumer holding at most its bound of
deliveries. A delivery not acknowledged by its deadline, nacked, or whose consumer left is
delivered again (to any consumer); one that reached the maximum of deliveries is parked
(kept, counted, re-drivable). The committed position moves past the contiguous run of
acknowledged, parked and non-matching events; every change is stored before it counts
(an attempt before its delivery is sent), so a restart resumes where the storage says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.events.feed import sent_of
from service.events.log import Log, Subscriptions
from service.events.model import EventFilter, StoredEvent
from service.events.subscriptions import Attempt, Parked, Settled, SubscriptionRecord

_log = logging.getLogger(__name__)
READ_BATCH = 256
# Events read ahead of the position at most: a subscription far behind does not hold its
# whole backlog in memory.
WINDOW = 2048
# The longest the dispatcher sleeps with nothing to do (its figures are refreshed as often).
IDLE_SECONDS = 1.0


@dataclass(eq=False, slots=True)
class _Entry:
    event: StoredEvent
    attempts: int = 0
    consumer: Consumer | None = None
    deadline: float = 0.0
    not_before: float = 0.0
    delivery_id: str = ""
    done: bool = False
    redriven: bool = False
    settling: bool = False  # acked or parked, not stored yet: its account waits

    @property
    def cursor(self) -> int:
        return self.event.cursor


@dataclass(frozen=True, slots=True)
class Handed:
    """A delivery on its way to a consumer."""

    delivery_id: str
    event: StoredEvent
    attempt: int


@dataclass(eq=False, slots=True)
class Consumer:
    """One attached consumer: what it holds, and its deliveries waiting to be sent (None
    ends it: the subscription is gone)."""

    max_outstanding: int
    outbox: asyncio.Queue[Handed | None] = field(default_factory=asyncio.Queue)
    outstanding: dict[str, _Entry] = field(default_factory=dict)

    @property
    def room(self) -> int:
        return self.max_outstanding - len(self.outstanding)


@dataclass(frozen=True, slots=True)
class State:
    """A subscription's figures, as `GetSubscription` and the metrics report them."""

    position: int
    pending: int
    outstanding: int
    oldest_unacked_age: float
    redeliveries: int
    parked: tuple[Parked, ...]
    consumers: int


class Dispatcher:
    """Delivers one subscription's events. `start` it; `close` it."""

    def __init__(
        self,
        record: SubscriptionRecord,
        event_filter: EventFilter,
        store: Subscriptions,
        log: Log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.record = record
        self._filter = event_filter
        self._store = store
        self._log = log
        self._clock = clock
        self._position = 0
        self._read_through = 0
        self._entries: dict[int, _Entry] = {}  # by cursor, in cursor order
        self._redriven: dict[int, _Entry] = {}  # parked events delivered again
        self._accounts: dict[str, deque[_Entry]] = {}
        self._restored_done: set[int] = set()
        self._restored_attempts: dict[int, int] = {}
        self._parked: dict[int, Parked] = {}
        self._consumers: list[Consumer] = []
        self._settled_acks: list[_Entry] = []
        self._settled_parks: list[tuple[_Entry, Parked]] = []
        self._epoch = 0  # bumped by a seek: deliveries of before are stale
        self._redeliveries = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waits_stopped = False
        self._stored_position = 0

    async def start(self) -> None:
        """Resumes from what the storage holds, then delivers until closed."""
        progress = await self._store.progress(self.record.id)
        self._position = self._read_through = progress.position
        self._stored_position = progress.position
        self._restored_done = {cursor for cursor in progress.done if cursor > progress.position}
        self._restored_attempts = progress.attempts
        for parked in progress.parked:
            self._parked[parked.cursor] = parked
        await self._load_redriven([p for p in progress.parked if p.redriven])
        self._task = asyncio.create_task(self._run(), name=f"subscription-{self.record.id}")

    async def close(self) -> None:
        """Stops delivering and ends the attached consumers' streams."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for consumer in self._consumers:
            consumer.outbox.put_nowait(None)
        self._consumers.clear()

    # --- Consumers ------------------------------------------------------------------

    def attach(self, max_outstanding: int) -> Consumer:
        """A new consumer, given deliveries from now on."""
        consumer = Consumer(max_outstanding)
        self._consumers.append(consumer)
        self._wake.set()
        return consumer

    def detach(self, consumer: Consumer) -> None:
        """The consumer left: what it held is delivered again, to the others."""
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        now = self._clock()
        for entry in list(consumer.outstanding.values()):
            self._release(entry, now, delay=0.0)
        self._wake.set()

    def ack(self, consumer: Consumer, delivery_id: str) -> None:
        """Done with a delivery; a stale id (redelivered since, sought past) is ignored."""
        entry = consumer.outstanding.pop(delivery_id, None)
        if entry is None:
            return
        entry.consumer = None
        entry.settling = True
        self._settled_acks.append(entry)
        self._wake.set()

    def nack(self, consumer: Consumer, delivery_id: str, delay: float) -> None:
        """Gives a delivery back, to be delivered again after `delay` seconds."""
        entry = consumer.outstanding.get(delivery_id)
        if entry is not None:
            self._release(entry, self._clock(), delay)
            self._wake.set()

    # --- Management -------------------------------------------------------------------

    def update(self, record: SubscriptionRecord) -> None:
        """New delivery settings (deliveries already out keep their deadline)."""
        self.record = record
        self._wake.set()

    async def seek(self, position: int) -> None:
        """Delivers the events after `position` (again); deliveries out become stale."""
        await self._store.seek(self.record.id, position)
        self._epoch += 1
        for consumer in self._consumers:
            consumer.outstanding.clear()
        self._entries.clear()
        self._accounts.clear()
        for entry in self._redriven.values():
            entry.consumer = None
            self._queue(entry, front=True)
        self._restored_done.clear()
        self._restored_attempts.clear()
        self._settled_acks.clear()
        self._position = self._read_through = self._stored_position = position
        self._wake.set()

    async def redrive(self) -> None:
        """Delivers the parked events again, each with a fresh count of attempts."""
        await self._store.redrive(self.record.id)
        waiting = [p for p in self._parked.values() if not p.redriven]
        for parked in waiting:
            self._parked[parked.cursor] = Parked(
                parked.cursor, parked.account_id, parked.attempts, parked.parked_at, True
            )
        await self._load_redriven(waiting)
        self._wake.set()

    def state(self) -> State:
        """The subscription's figures now."""
        now_wall = time.time()
        oldest = next((e.event.recorded_at for e in self._entries.values() if not e.done), None)
        redriven = [e.event.recorded_at for e in self._redriven.values()]
        candidates = [t for t in [oldest, *redriven] if t is not None]
        if oldest is None and self._log.latest_cursor > self._read_through:
            candidates.append(now_wall)  # not read yet: at least this old
        outstanding = sum(len(c.outstanding) for c in self._consumers)
        return State(
            position=self._position,
            pending=max(0, self._log.latest_cursor - self._position),
            outstanding=outstanding,
            oldest_unacked_age=max(0.0, now_wall - min(candidates)) if candidates else 0.0,
            redeliveries=self._redeliveries,
            parked=tuple(p for p in self._parked.values() if not p.redriven),
            consumers=len(self._consumers),
        )

    # --- The loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._fill()
                now = self._clock()
                self._expire(now)
                # Acks stored first: an account's next event goes out only once the ack of
                # the one before is durable.
                await self._store_settled()
                await self._hand_out(self._clock())
            except asyncio.CancelledError:
                raise
            except Exception:  # storage trouble: the next round tries again
                _log.exception("subscription %s: delivery round failed", self.record.name)
            await self._wait()

    async def _fill(self) -> None:
        """Reads the log past what was read, up to the window."""
        while len(self._entries) < WINDOW:
            epoch, after = self._epoch, self._read_through
            batch = await self._log.read(after, READ_BATCH)
            if epoch != self._epoch or not batch:
                return
            for event in sent_of(batch, self._filter):
                if event.cursor in self._restored_done or event.cursor in self._parked:
                    continue
                entry = _Entry(event, attempts=self._restored_attempts.pop(event.cursor, 0))
                self._entries[event.cursor] = entry
                self._queue(entry)
            self._read_through = batch[-1].cursor
            self._advance()
            if len(batch) < READ_BATCH:
                return

    def _queue(self, entry: _Entry, *, front: bool = False) -> None:
        queue = self._accounts.setdefault(entry.event.account_id, deque())
        if front:  # older than the account's others, but after one already out
            queue.insert(1 if queue and queue[0].consumer is not None else 0, entry)
        else:
            queue.append(entry)

    def _expire(self, now: float) -> None:
        for consumer in self._consumers:
            for entry in [e for e in consumer.outstanding.values() if e.deadline <= now]:
                self._release(entry, now, delay=0.0)

    async def _hand_out(self, now: float) -> None:
        """Gives each free account's next event to the consumer with the most room."""
        handed: list[tuple[Consumer, _Entry]] = []
        for queue in self._accounts.values():
            if not self._consumers:
                break
            head = queue[0]
            if head.consumer is not None or head.settling or head.not_before > now:
                continue
            consumer = max(self._consumers, key=lambda c: c.room)
            if consumer.room <= 0:
                break
            head.attempts += 1
            if head.attempts > 1:
                self._redeliveries += 1
            head.consumer = consumer
            head.deadline = now + self.record.ack_deadline
            head.delivery_id = f"{self.record.id}.{self._epoch}.{head.cursor}.{head.attempts}"
            consumer.outstanding[head.delivery_id] = head
            handed.append((consumer, head))
        if not handed:
            return
        await self._store.record_attempts(
            self.record.id,
            [Attempt(e.cursor, e.event.account_id, e.attempts) for _, e in handed],
        )
        for consumer, entry in handed:  # unless it was taken back while being recorded
            if consumer.outstanding.get(entry.delivery_id) is entry:
                consumer.outbox.put_nowait(Handed(entry.delivery_id, entry.event, entry.attempts))

    def _release(self, entry: _Entry, now: float, delay: float) -> None:
        """Takes a delivery back: out again after `delay`, or parked at the maximum."""
        if entry.consumer is not None:
            entry.consumer.outstanding.pop(entry.delivery_id, None)
            entry.consumer = None
        if entry.attempts >= self.record.max_deliveries:
            parked = Parked(entry.cursor, entry.event.account_id, entry.attempts, time.time())
            self._parked[entry.cursor] = parked
            entry.settling = True
            self._settled_parks.append((entry, parked))
        else:
            entry.not_before = now + delay

    def _finish(self, entry: _Entry) -> None:
        """An acked or parked event: its account's next one may go."""
        entry.done = True
        queue = self._accounts.get(entry.event.account_id)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(entry)
            if not queue:
                del self._accounts[entry.event.account_id]
        if entry.redriven:
            self._redriven.pop(entry.cursor, None)
        self._advance()

    def _advance(self) -> None:
        """Moves the position past the contiguous run of finished events."""
        while self._entries:
            first = next(iter(self._entries.values()))
            if not first.done:
                self._position = max(self._position, first.cursor - 1)
                return
            del self._entries[first.cursor]
        self._position = max(self._position, self._read_through)

    async def _store_settled(self) -> None:
        acks, parks = self._settled_acks, self._settled_parks
        if not acks and not parks and self._position == self._stored_position:
            return
        self._settled_acks, self._settled_parks = [], []
        # Finished here, before the write, by the one task that hands events out: an
        # account's next event goes out only after this write (an ack arriving meanwhile
        # waits, `settling`, for the next one).
        for entry in acks:
            self._parked.pop(entry.cursor, None)  # an acked redriven event is parked no more
            self._finish(entry)
        for entry, _ in parks:
            self._finish(entry)
        self._stored_position = self._position
        settled = Settled(
            tuple(entry.cursor for entry in acks), tuple(p for _, p in parks), self._position
        )
        await self._store.record_settled(self.record.id, settled)

    async def _load_redriven(self, parked: list[Parked]) -> None:
        for item in parked:
            events = await self._log.read(item.cursor - 1, 1)
            if not events or events[0].cursor != item.cursor:
                continue  # retention took it: it stays counted as parked
            entry = _Entry(events[0], redriven=True)
            self._redriven[item.cursor] = entry
            self._queue(entry, front=True)

    async def _wait(self) -> None:
        """Until something changes: an ack, a consumer, an append, or a timer."""
        now = self._clock()
        timers = [IDLE_SECONDS]
        for queue in self._accounts.values():
            head = queue[0]
            if head.consumer is not None:
                timers.append(head.deadline - now)
            elif head.not_before > now:
                timers.append(head.not_before - now)
        timeout = max(0.0, min(timers))
        wake = asyncio.ensure_future(self._wake.wait())
        waiters: list[asyncio.Future[Any]] = [wake]
        reading = len(self._entries) < WINDOW and not self._waits_stopped
        if reading:
            waiters.append(
                asyncio.ensure_future(self._log.wait_for_append(self._read_through, timeout))
            )
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()
        if reading and len(done) == 1 and wake not in done and timeout > 0:
            # The log ends waits at once when the server drains: poll from then on.
            self._waits_stopped = self._log.latest_cursor <= self._read_through
