"""The inbox on JetStream: a second stream, `<stream>_INBOX` on `<prefix>_inbox.<account
token>`, limited to `inbox_limit` messages with new ones discarded (the gateway then
answers 503). Its `Nats-Msg-Id` is the event id, so a redelivery while pending is dropped
at the door.

Every event carries `inbox_through`, the highest inbox sequence its account has had
recorded (carried forward by later events of the account); a verifier settles an entry by
publishing the event with the account's expected last sequence, then purging the
account's inbox subject up to it. A verifier (of any replica) that finds an entry at or
below `inbox_through` knows it is recorded, whatever crashed.
"""

from __future__ import annotations

from collections.abc import Sequence

import nats.js.errors

from service.events.jetstream.appender import Appender
from service.events.jetstream.codec import inbox_entry, inbox_headers, msg_id, received_at
from service.events.jetstream.connection import NATS_ERRORS, Connection
from service.events.model import (
    Accepted,
    AppendOutcome,
    EventLogUnavailable,
    EventRecord,
    InboxEntry,
    InboxFull,
    InboxStats,
    Settlement,
)
from service.events.tail import Watermark

_MAX_ENTRIES_PER_SETTLE = 1000


class JetStreamInbox:
    """The inbox stream, as the ingestor and the verifier use it; an `Inbox`."""

    def __init__(self, connection: Connection, appender: Appender) -> None:
        self._connection = connection
        self._appender = appender
        # Counts the inbox publications seen (of any replica): hints to read the inbox.
        self._hints = Watermark()
        self._hints_seen = 0
        # The highest inbox sequence seen: a recreated inbox starts above it, since
        # recorded events name inbox positions (`inbox_through`).
        self._latest = 0

    @property
    def latest(self) -> int:
        """The highest inbox sequence this replica has seen."""
        return self._latest

    def hint(self) -> None:
        """Has `wait_for_inbox` return: an entry may have arrived (or notifications were
        lost)."""
        self._hints.advance(self._hints.value + 1)

    async def accept(self, entry: InboxEntry, alone: EventRecord | None = None) -> Accepted:
        """Publishes a webhook to the inbox unless it is recorded or already pending.

        Always to the inbox, even with `alone`: whether an account has entries pending
        is known to the shared stream, not to this replica, so the verifier (on any
        replica) keeps each account's order.
        """
        if self._connection.closed:
            raise EventLogUnavailable("the event log is closed")
        options = self._connection.options
        headers = {"Nats-Msg-Id": msg_id(entry.event_id), **inbox_headers(entry)}
        try:
            if await self._appender.recorded(entry.event_id) is not None:
                return Accepted.REPEATED
            subject = options.inbox_subject(entry.account_id)
            ack = await self._connection.publish(subject, entry.body, headers, options.inbox_stream)
            self._latest = max(self._latest, ack.seq)
            held = await self._held_as(entry.account_id, ack.seq) if ack.duplicate else None
            if held is not None:
                return held
            if ack.duplicate:
                # Within the window JetStream remembers the id of an entry that is gone
                # from the inbox yet was never recorded: taken again, under an id of its own.
                headers["Nats-Msg-Id"] = msg_id(f"{entry.event_id}\n{ack.seq}")
                await self._connection.publish(subject, entry.body, headers, options.inbox_stream)
        except nats.js.errors.APIError as error:
            if "maximum messages" in str(error.description or ""):
                raise InboxFull(
                    f"{options.inbox_limit} webhooks are waiting for verification (the limit)"
                ) from error
            raise EventLogUnavailable(f"JetStream did not take the webhook: {error!r}") from error
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream did not take the webhook: {error!r}") from error
        return Accepted.QUEUED

    async def pending(self, after: int, limit: int) -> list[InboxEntry]:
        """Inbox entries after `after`, through a short-lived consumer."""
        options = self._connection.options
        try:
            info = await self._connection.current.js.stream_info(options.inbox_stream)
            self._latest = max(self._latest, info.state.last_seq)
            if info.state.messages == 0 or info.state.last_seq <= after:
                return []
            start = max(after + 1, info.state.first_seq)
            messages = await self._connection.fetch_from(
                options.inbox_stream, options.inbox_wildcard, start, limit
            )
        except TimeoutError:
            return []  # the newer entries were settled meanwhile
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream inbox read failed: {error!r}") from error
        return [
            inbox_entry(message.metadata.sequence.stream, message.headers, message.data)
            for message in messages
        ]

    async def unsettled(self, entries: Sequence[InboxEntry]) -> list[InboxEntry]:
        """Every entry of the account still waiting above its `inbox_through`, read from
        the stream rather than taken from `entries`: replicas read the inbox
        independently, so this one may not have seen all of them, and settling must
        never skip an earlier entry of the account."""
        if not entries:
            return []
        account_id = entries[0].account_id
        try:
            through = (await self._appender.last_on(account_id)).inbox_through
            if through >= min(entry.seq for entry in entries):
                await self._clear(account_id, through)  # settled, not yet cleared
            return await self._entries_of(account_id, through)
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error

    async def _entries_of(self, account_id: str, after: int) -> list[InboxEntry]:
        """The account's inbox entries after sequence `after`, oldest first (bounded)."""
        options = self._connection.options
        subject = options.inbox_subject(account_id)
        found: list[InboxEntry] = []
        while len(found) < _MAX_ENTRIES_PER_SETTLE:
            try:
                message = await self._connection.current.js.get_msg(
                    options.inbox_stream, seq=after + 1, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError:
                break
            entry = inbox_entry(message.seq or 0, message.headers, message.data or b"")
            found.append(entry)
            after = entry.seq
        return found

    async def settle(
        self, entries: Sequence[InboxEntry], records: Sequence[EventRecord]
    ) -> Settlement:
        """Publishes `records` in order, then purges the account's inbox subject through
        the last entry they were found to cover. A record whose first webhook another
        replica recorded already (in a group that may have ended sooner) covers only what
        that replica's event covered: the entries past it stay in the inbox, unrecorded,
        and later records are not published ahead of them."""
        if self._connection.closed:
            raise EventLogUnavailable("the event log is closed")
        outcomes: list[AppendOutcome] = []
        covered = 0
        try:
            for record in records:
                appended = await self._appender.append_one(record)
                outcomes.append(appended.outcome)
                covered = max(covered, appended.covered_through)
                if appended.covered_through < record.inbox_through:
                    break  # the rest is read again, so that it is recorded in order
            if entries and covered:
                await self._clear(entries[0].account_id, covered)
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream did not take the event: {error!r}") from error
        return Settlement(outcomes, [entry for entry in entries if entry.seq > covered])

    async def wait_for_inbox(self, after: int, timeout: float) -> None:
        """Returns when a webhook reaches the inbox (of any replica), or after `timeout`."""
        await self._hints.wait_past(self._hints_seen, timeout)
        self._hints_seen = self._hints.value  # `pending` reads the truth

    async def inbox_stats(self) -> InboxStats:
        """Messages in the inbox stream and the receipt time of the first."""
        options = self._connection.options
        js = self._connection.current.js
        try:
            info = await js.stream_info(options.inbox_stream)
            if info.state.messages == 0:
                return InboxStats(0, None)
            # The first entry may be settled meanwhile: the first still there, if any.
            first = await js.get_msg(
                options.inbox_stream,
                seq=info.state.first_seq,
                subject=options.inbox_wildcard,
                next=True,
            )
        except nats.js.errors.NotFoundError:
            return InboxStats(0, None)  # every entry was settled since `stream_info`
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        return InboxStats(info.state.messages, received_at(first.headers))

    async def _held_as(self, account_id: str, seq: int) -> Accepted | None:
        """What became of inbox entry `seq` of the account: still waiting (DUPLICATE),
        covered by a recorded event (REPEATED), or neither (None)."""
        try:
            await self._connection.current.js.get_msg(
                self._connection.options.inbox_stream, seq=seq
            )
        except nats.js.errors.NotFoundError:
            if (await self._appender.last_on(account_id)).inbox_through >= seq:
                return Accepted.REPEATED
            return None
        return Accepted.DUPLICATE

    async def _clear(self, account_id: str, through: int) -> None:
        # Purges the account's subject below `through + 1`: entries up to it are recorded.
        options = self._connection.options
        await self._connection.current.js.purge_stream(
            options.inbox_stream, seq=through + 1, subject=options.inbox_subject(account_id)
        )
