"""Each replica follows the events' stream into an in-memory tail that all its subscribers
share, folding each event into the registry before readers see its cursor.

A core-NATS subscription to the stream's subjects wakes the follower at once; a poll every
second catches anything that wake-up missed (e.g. across a reconnect). Reads older than the
tail use a short-lived consumer starting at the cursor. The replica that appends an event
writes its registry entry right after; one that died in between leaves it to whichever
replica follows the event (every one does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.aio.msg import Msg
from nats.js.api import StreamInfo

from service.events.jetstream.codec import state_of, stored
from service.events.jetstream.connection import BackgroundFailures, Connection, wait_at_most
from service.events.jetstream.registry import JetStreamRegistry
from service.events.model import EventRecord, StoredEvent
from service.events.tail import Tail
from service.retry import RetryPolicy

_FOLLOW_BATCH = 1024  # events the follower reads at a time
_APPENDED_IDS_KEPT = 4096  # far more than appends in flight while notifications arrive
# The waits between the follower's failed reads.
_FOLLOWING = RetryPolicy(attempts=None, first_wait=0.5, longest_wait=5.0)


class Follower:
    """Keeps this replica's tail up to the stream, and the registry up to the tail."""

    def __init__(
        self,
        connection: Connection,
        tail: Tail,
        registry: JetStreamRegistry,
        failures: BackgroundFailures,
    ) -> None:
        self._connection = connection
        self._tail = tail
        self._registry = registry
        self._failures = failures
        self._pruned_through = 0
        self._poke = asyncio.Event()
        # `Nats-Msg-Id`s of this replica's latest appends: their notifications wake no one
        # (the appender puts them in the tail itself); bounded, oldest out first.
        self._appended_ids: dict[str, None] = {}
        # Own appends the follower will read (others came in between): already written.
        self._registered_here: set[int] = set()

    @property
    def pruned_through(self) -> int:
        """The last sequence retention removed, as far as this replica has seen."""
        return self._pruned_through

    def saw(self, info: StreamInfo) -> None:
        """Takes the stream's first sequence from a look at it."""
        self._pruned_through = max(self._pruned_through, info.state.first_seq - 1)

    async def start(self, info: StreamInfo) -> None:
        """At open: folds into the registry the events after its watermark (those whose
        appender may have died before writing their entries, with every replica down),
        then starts the tail at the stream's end."""
        self.saw(info)
        after = max(await self._registry.folded_through(), self._pruned_through)
        while after < info.state.last_seq:
            events = await self.fetch(after, _FOLLOW_BATCH)
            if not events:
                break
            await self._fold(events)
            after = events[-1].cursor
        self._tail.start_at(info.state.last_seq)

    async def fetch(self, after: int, limit: int) -> list[StoredEvent]:
        """Up to `limit` events after `after` (which must exist), from the stream."""
        options = self._connection.options
        messages = await self._connection.fetch_from(
            options.stream, options.events_wildcard, after + 1, limit
        )
        return [stored(message) for message in messages]

    def appending(self, msg_id: str) -> None:
        """Notes the `Nats-Msg-Id` of an append of this replica, whose notification need
        not wake the follower."""
        self._appended_ids[msg_id] = None
        if len(self._appended_ids) > _APPENDED_IDS_KEPT:
            del self._appended_ids[next(iter(self._appended_ids))]

    def appended(self, record: EventRecord, cursor: int, recorded_at: float) -> None:
        """Our own append (its registry entry written) goes straight into the tail when
        nothing came in between."""
        if cursor <= self._tail.latest:
            return  # the follower read it first, and folded it into the registry
        if cursor != self._tail.latest + 1:
            self._registered_here.add(cursor)  # its registry entry is written: not again
            self._poke.set()  # another replica's events are between: the follower reads them
            return
        self._tail.publish([record.stored(cursor, recorded_at)])

    def notified(self, message: Msg) -> None:
        """Another replica's event wakes the follower; each one of ours would have it read
        the stream (a consumer each) for what the appender publishes itself."""
        if (message.headers or {}).get("Nats-Msg-Id") not in self._appended_ids:
            self._poke.set()

    def wake(self) -> None:
        """Has the follower look at the stream now."""
        self._poke.set()

    async def run(self) -> None:
        """Brings the tail up to the stream whenever woken (or every second) until the
        log closes; any failure is logged, counted and retried under the retry policy."""

        def failed(error: Exception) -> bool:
            self._failures.failed("event_log_follow", error)
            return True  # until it reads: `close` cancels this task

        async def catch_up() -> bool:
            self._poke.clear()  # before reading, so a poke meanwhile is not lost
            return await self._catch_up()

        while not self._connection.closed:
            behind = await _FOLLOWING.call(catch_up, failed)
            if not behind:
                await wait_at_most(self._poke, 1.0)

    async def _catch_up(self) -> bool:
        """Reads one batch of newer events into the tail; True while more may wait."""
        options = self._connection.options
        info = await self._connection.current.js.stream_info(options.stream)
        self.saw(info)
        if info.state.last_seq <= self._tail.latest:
            await self._registry.advance_watermark()
            return False
        events = await self.fetch(self._tail.latest, _FOLLOW_BATCH)
        await self._fold(events)  # before readers see their cursors
        self._tail.publish(events)
        # A short read is all there was: what is appended meanwhile is this replica's own
        # (it publishes them itself) or pokes the follower. Reading on would chase the
        # appends with a consumer each.
        return len(events) >= _FOLLOW_BATCH

    async def _fold(self, events: Sequence[StoredEvent]) -> None:
        """Writes each event's registry entry unless a later one is known."""
        for event in events:
            if event.cursor in self._registered_here:
                self._registered_here.discard(event.cursor)
                continue
            if not self._registry.holds_later(event.account_id, event.cursor):
                await self._registry.register(*state_of(event))
