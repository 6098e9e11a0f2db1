"""Recording events on JetStream: each is a message on `<prefix>.<account token>`, its
cursor the stream sequence, its `Nats-Msg-Id` the event id (so JetStream drops
redeliveries within the stream's duplicate window, whichever replica they reach).

"Already known" (the same change reported by a webhook and by reconciliation) is checked
against the last message on the account's subject, and the publish carries
`Nats-Expected-Last-Subject-Sequence`: if another replica recorded something for that
account in between, JetStream refuses the publish and the check runs again. Two replicas
sweeping at once therefore record a change once. The ids bucket remembers the ids recorded
within the dedup window (so a redelivery of a recorded webhook is answered without a new
event).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import nats.js.errors

from service.events.jetstream.codec import LastEvent, Recorded, event_headers, id_key, msg_id
from service.events.jetstream.connection import Connection
from service.events.jetstream.follower import Follower
from service.events.jetstream.registry import JetStreamRegistry
from service.events.model import (
    AppendOutcome,
    EventLogUnavailable,
    EventRecord,
    KnownAccount,
    already_known,
)
from service.events.registry import enriched, registered

_WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-sequence check
_MAX_CONFLICT_RETRIES = 20


@dataclass(frozen=True, slots=True)
class Appended:
    """One record's outcome, and the highest inbox sequence known to be covered by an
    event once it was handled (the record's own `inbox_through` when it was recorded)."""

    outcome: AppendOutcome
    covered_through: int

    @classmethod
    def duplicate(cls, record: EventRecord, cursor: int, covered_through: int) -> Appended:
        return cls(AppendOutcome(record.event_id, cursor, duplicate=True), covered_through)


class Appender:
    """Publishes events one at a time, each checked against the account's last."""

    def __init__(
        self, connection: Connection, registry: JetStreamRegistry, follower: Follower
    ) -> None:
        self._connection = connection
        self._registry = registry
        self._follower = follower

    async def append_one(self, original: EventRecord) -> Appended:
        """Records `original` unless it (or the change it reports) is recorded already;
        its registry entry and ids are written before it reaches this replica's tail."""
        options = self._connection.options
        subject = options.subject(original.account_id)
        record = original
        for _ in range(_MAX_CONFLICT_RETRIES):
            recorded = await self.recorded(record.event_id)
            if recorded is not None:
                # Whoever recorded this id covered the inbox as far as it had read.
                through = min(record.inbox_through, recorded.inbox_through)
                return Appended.duplicate(record, recorded.cursor, through)
            last = await self.last_on(record.account_id)
            if last.event_id == record.event_id:  # another replica published it just now
                through = min(record.inbox_through, last.inbox_through)
                return Appended.duplicate(record, last.sequence, through)
            if record.inbox_through and record.inbox_through <= last.inbox_through:
                return Appended.duplicate(record, 0, record.inbox_through)  # settled already
            if already_known(record, last.known):
                # Remembered, as on SQLite, so a redelivery is dropped without another check.
                await self._remember_ids(record, 0)
                return Appended.duplicate(record, 0, record.inbox_through)
            previous = last.entry
            if previous is None and self._registry.holds(record.account_id):
                # A live account whose events are pruned: the bucket still has its entry.
                previous = await self._registry.registered(record.account_id)
            record = enriched(original, previous)
            recorded_at = time.time()
            inbox_through = max(record.inbox_through, last.inbox_through)
            headers = {
                "Nats-Msg-Id": msg_id(record.event_id),
                "Nats-Expected-Last-Subject-Sequence": str(last.sequence),
                **event_headers(record, recorded_at, inbox_through),
            }
            self._follower.appending(headers["Nats-Msg-Id"])
            try:
                ack = await self._connection.publish(subject, record.body, headers, options.stream)
            except nats.js.errors.APIError as error:
                if error.err_code == _WRONG_LAST_SEQUENCE:
                    continue  # another replica recorded this account meanwhile: check again
                raise
            if ack.duplicate:  # recorded by another replica, how far unknown: read again
                return Appended.duplicate(record, ack.seq, 0)
            await self._remember(record, ack.seq, recorded_at)
            self._follower.appended(record, ack.seq, recorded_at)
            return Appended(AppendOutcome(record.event_id, ack.seq, False), record.inbox_through)
        raise EventLogUnavailable(f"account {record.account_id} kept changing; retry")

    async def last_on(self, account_id: str) -> LastEvent:
        """What the last event of an account says."""
        options = self._connection.options
        try:
            message = await self._connection.current.js.get_last_msg(
                options.stream, options.subject(account_id)
            )
        except nats.js.errors.NotFoundError:
            return LastEvent.none()
        return LastEvent.of(message)

    async def recorded(self, event_id: str) -> Recorded | None:
        """Where `event_id` was recorded (within the dedup window), if it was."""
        try:
            entry = await self._connection.current.ids.get(id_key(event_id))
        except nats.js.errors.KeyNotFoundError:
            return None
        return Recorded.parse(entry.value or b"0")

    async def _remember_ids(self, record: EventRecord, cursor: int) -> None:
        value = Recorded(cursor, record.inbox_through).value()
        for event_id in record.ids:
            await self._connection.current.ids.put(id_key(event_id), value)

    async def _remember(self, record: EventRecord, cursor: int, recorded_at: float) -> None:
        entry = registered(record.stored(cursor, recorded_at))
        await self._registry.register(KnownAccount.recorded(record), entry)
        await self._remember_ids(record, cursor)
