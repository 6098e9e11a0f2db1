"""`JetStreamEventLog`: the event log's roles on JetStream, composed of the parts that
share one binding to NATS (see the package's docstring for the whole)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence

from service.aio import cancel_all
from service.events.cursors import Incarnation
from service.events.jetstream.appender import Appender
from service.events.jetstream.connection import (
    NATS_ERRORS,
    BackgroundFailures,
    Connection,
    Listeners,
)
from service.events.jetstream.follower import Follower
from service.events.jetstream.inbox import JetStreamInbox
from service.events.jetstream.incarnation import StreamIncarnation
from service.events.jetstream.options import JetStreamOptions
from service.events.jetstream.registry import JetStreamRegistry
from service.events.log import ReportFailure, ignore_failure
from service.events.model import (
    Accepted,
    AppendOutcome,
    EventLogUnavailable,
    EventRecord,
    InboxEntry,
    InboxStats,
    KnownAccount,
    LogBounds,
    Settlement,
    StoredEvent,
)
from service.events.registry import RegistryPage, RegistryQuery
from service.events.tail import Tail


class JetStreamEventLog:
    """An `EventLog` in a JetStream stream. Create it with `JetStreamEventLog.open`.

    The log and lifecycle roles are its own; the inbox and the registry are parts of
    their own, which it answers for.
    """

    def __init__(self, options: JetStreamOptions, *, report_failure: ReportFailure) -> None:
        self._failures = BackgroundFailures(report_failure)
        self._tail = Tail(options.tail_bytes)
        self._connection = Connection(
            options,
            Listeners(
                event_published=lambda message: self._follower.notified(message),
                inbox_published=lambda: self._inbox.hint(),
                connected_again=self._connected_again,
                streams_recreated=self._stream_recreated,
                seen=lambda: (self._tail.latest, self._inbox.latest),
            ),
            self._failures,
        )
        self._registry = JetStreamRegistry(self._connection, self._tail)
        self._follower = Follower(self._connection, self._tail, self._registry, self._failures)
        self._appender = Appender(self._connection, self._registry, self._follower)
        self._inbox = JetStreamInbox(self._connection, self._appender)
        self._incarnation = StreamIncarnation(options.stream, self._registry)
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls, options: JetStreamOptions, *, report_failure: ReportFailure = ignore_failure
    ) -> JetStreamEventLog:
        """Connects, creates or updates the stream and buckets, and starts following;
        `report_failure` hears of each failure the follower or the reconnection survives,
        as `background_failures` counts them."""
        log = cls(options, report_failure=report_failure)
        info = await log._connection.open()
        await log._incarnation.establish(info)
        await log._registry.load()
        await log._follower.start(info)
        log._tasks = [
            asyncio.create_task(log._follower.run(), name="jetstream-follow"),
            asyncio.create_task(log._connection.keep_connected(), name="jetstream-connection"),
        ]
        return log

    @property
    def reconnects(self) -> int:
        """nats-py's own reconnections, after a drop."""
        return self._connection.reconnects

    @property
    def reopens(self) -> int:
        """Fresh connections, after nats-py closed one for good."""
        return self._connection.reopens

    @property
    def restores(self) -> int:
        """Streams or buckets found missing and created again."""
        return self._connection.restores

    @property
    def background_failures(self) -> Counter[str]:
        """Failures of the follower and the reconnection (each retried), by task."""
        return self._failures.counts

    # --- Log ------------------------------------------------------------------------------

    async def append(self, records: Sequence[EventRecord]) -> list[AppendOutcome]:
        """Publishes records in order; each is on the stream when this returns."""
        if self._connection.closed:
            raise EventLogUnavailable("the event log is closed")
        try:
            return [(await self._appender.append_one(record)).outcome for record in records]
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream did not take the event: {error!r}") from error

    async def read(self, after: int, limit: int) -> list[StoredEvent]:
        """Events after `after`, from the shared tail when it reaches back that far."""
        cached = self._tail.read(after, limit)
        if cached is not None:
            return cached
        try:
            return await self._follower.fetch(after, limit)
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream read failed: {error!r}") from error

    @property
    def latest_cursor(self) -> int:
        """The newest cursor this replica has seen."""
        return self._tail.latest

    @property
    def incarnation(self) -> Incarnation:
        """The stream's incarnation, named by its creation time: a stream created again
        (by a replica after NATS lost it, or by hand) is another."""
        return self._incarnation.current

    async def bounds(self, *, exact: bool = False) -> LogBounds:
        """Pruned-through and latest cursors; `exact` asks the server, not this replica."""
        if exact:
            try:
                info = await self._connection.current.js.stream_info(
                    self._connection.options.stream
                )
            except NATS_ERRORS as error:
                raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
            self._follower.saw(info)
            await self._incarnation.establish(info)
            latest = max(self._tail.latest, info.state.last_seq)
            return LogBounds(self._follower.pruned_through, latest)
        return LogBounds(self._follower.pruned_through, self._tail.latest)

    def wait_for_append(self, after: int, timeout: float) -> asyncio.Future[None]:
        """Done once this replica has seen an event past `after`, or after `timeout`."""
        return self._tail.wait_for_append(after, timeout)  # a future: no frame per waiter

    def stop_waits(self) -> None:
        """Ends every current and later `wait_for_append` at once (the server is draining)."""
        self._tail.stop_waits()

    # --- Inbox ----------------------------------------------------------------------------

    async def accept(self, entry: InboxEntry, alone: EventRecord | None = None) -> Accepted:
        """Publishes a webhook to the inbox unless it is recorded or already pending."""
        return await self._inbox.accept(entry, alone)

    async def pending(self, after: int, limit: int) -> list[InboxEntry]:
        """Inbox entries after `after`."""
        return await self._inbox.pending(after, limit)

    async def unsettled(self, entries: Sequence[InboxEntry]) -> list[InboxEntry]:
        """Every entry of the account still waiting above its `inbox_through`."""
        return await self._inbox.unsettled(entries)

    async def settle(
        self, entries: Sequence[InboxEntry], records: Sequence[EventRecord]
    ) -> Settlement:
        """Publishes `records`, then clears the entries they cover."""
        return await self._inbox.settle(entries, records)

    async def wait_for_inbox(self, after: int, timeout: float) -> None:
        """Returns when a webhook reaches the inbox (of any replica), or after `timeout`."""
        await self._inbox.wait_for_inbox(after, timeout)

    async def inbox_stats(self) -> InboxStats:
        """Messages in the inbox stream and the receipt time of the first."""
        return await self._inbox.inbox_stats()

    # --- Account registry -----------------------------------------------------------------

    async def known_accounts(self) -> dict[str, KnownAccount]:
        """Every account's last recorded state, from the accounts bucket."""
        return await self._registry.known_accounts()

    async def registry(self, query: RegistryQuery) -> RegistryPage:
        """Registry entries the query admits as of the cursor this replica's tail has
        reached."""
        return await self._registry.registry(query)

    async def mark_registry_complete(self) -> None:
        """Records that a full listing of StackOne has been folded into the registry."""
        await self._registry.mark_registry_complete()

    # --- Lifecycle ------------------------------------------------------------------------

    async def check_writable(self) -> None:
        """Raises `EventLogUnavailable` unless NATS is connected and the streams answer;
        streams or buckets found missing are created again first, as at start-up."""
        await self._connection.check_writable()

    async def enforce_retention(self, now: float | None = None) -> int:
        """JetStream enforces max age and count itself; this refreshes the pruned cursor."""
        pruned = (await self.bounds(exact=True)).pruned_through
        self._tail.prune(pruned)
        return pruned

    async def close(self) -> None:
        """Stops following and closes the connection (appends were acknowledged already)."""
        if self._connection.closed:
            return
        self._connection.closed = True
        await cancel_all(self._tasks)
        await self._connection.close()
        self._tail.wake_waiters()

    # --- What the connection tells the parts ----------------------------------------------

    def _connected_again(self) -> None:
        # Notifications sent while disconnected were lost: look at the stream and inbox now.
        self._follower.wake()
        self._inbox.hint()

    async def _stream_recreated(self) -> None:
        with contextlib.suppress(*NATS_ERRORS, EventLogUnavailable):
            info = await self._connection.current.js.stream_info(self._connection.options.stream)
            await self._incarnation.establish(info)
