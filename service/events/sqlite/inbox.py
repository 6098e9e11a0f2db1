"""The inbox (`inbox`): webhooks accepted at the door and not yet verified, added and
settled inside the writer's transaction, and the ids waiting kept in memory."""

from __future__ import annotations

import functools
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence

import orjson

from service.events.model import (
    Accepted,
    AppendOutcome,
    EventRecord,
    InboxEntry,
    InboxFull,
    InboxStats,
    Webhook,
)
from service.events.sqlite import events
from service.events.sqlite.writer import Staged
from service.events.tail import Watermark

_COLUMNS = "seq, event_id, type, account_id, received_at, body, traceparent, webhook"


class PendingIndex:
    """The webhooks waiting in the inbox, known in memory so that the door answers
    "a redelivery of one still waiting", "the account has entries waiting" and "the inbox
    is full" without a query: the committed entries (by id, and counted by account), and
    those the transaction being staged adds, forgotten when it ends either way."""

    __slots__ = ("_accounts", "_ids", "_staged_accounts", "_staged_ids")

    def __init__(self, waiting: Iterable[tuple[str, str]] = ()) -> None:
        waiting = list(waiting)  # (event id, account id) of each committed entry
        self._ids = {event_id for event_id, _ in waiting}
        self._accounts = Counter(account_id for _, account_id in waiting)
        self._staged_ids: set[str] = set()
        self._staged_accounts: set[str] = set()

    def __len__(self) -> int:
        """Committed entries waiting."""
        return len(self._ids)

    def holds(self, event_id: str) -> bool:
        """True when the webhook waits, or is being added."""
        return event_id in self._ids or event_id in self._staged_ids

    def has_waiting(self, account_id: str) -> bool:
        """True when the account has an entry waiting, or one being added."""
        return account_id in self._accounts or account_id in self._staged_accounts

    def is_full(self, limit: int) -> bool:
        """True when `limit` entries wait or are being added."""
        return len(self._ids) + len(self._staged_ids) >= limit

    def stage(self, entry: InboxEntry) -> None:
        """An entry the open transaction adds."""
        self._staged_ids.add(entry.event_id)
        self._staged_accounts.add(entry.account_id)

    def end_transaction(self) -> None:
        """Forgets what was staged: `committed` took what the commit kept."""
        self._staged_ids.clear()
        self._staged_accounts.clear()

    def committed(self, added: Iterable[InboxEntry], removed: Iterable[InboxEntry]) -> None:
        """Applies what a committed write added to and removed from the inbox."""
        for entry in added:
            self._ids.add(entry.event_id)
            self._accounts[entry.account_id] += 1
        for entry in removed:
            if entry.event_id in self._ids:
                self._ids.remove(entry.event_id)
                self._accounts[entry.account_id] -= 1
                if not self._accounts[entry.account_id]:
                    del self._accounts[entry.account_id]


def _stored_details(entry: InboxEntry) -> str:
    """The `webhook` column of an inbox row ('' for an entry with only its raw body)."""
    details = entry.stored_details()
    return "" if details is None else orjson.dumps(details).decode()


def _inbox_entry(
    seq: int,
    event_id: str,
    event_type: str,
    account_id: str,
    received_at: float,
    body: bytes,
    traceparent: str,
    details: str,
) -> InboxEntry:
    """An inbox row as `stage_accept` wrote it (`details` '': an earlier release's)."""
    stored = orjson.loads(details) if details else None
    return InboxEntry(
        seq,
        Webhook.stored(event_id, event_type, account_id, stored),
        received_at,
        body,
        traceparent,
        from_raw_body_only=not details,
    )


def select_pending(conn: sqlite3.Connection, after: int, limit: int) -> list[InboxEntry]:
    """Up to `limit` entries after sequence `after`, oldest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608 - constant column list
        (after, limit),
    ).fetchall()
    return [_inbox_entry(*row) for row in rows]


def load_position(conn: sqlite3.Connection) -> tuple[list[tuple[str, str]], int]:
    """The (event id, account id) of every inbox entry, and the newest sequence."""
    pending = conn.execute("SELECT event_id, account_id FROM inbox").fetchall()
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'inbox'").fetchone()
    return pending, int(row[0]) if row else 0


class Waiting:
    """What the writer and the verifier share of the inbox: the entries waiting (in memory)
    and the newest sequence committed, which wakes the verifier."""

    def __init__(self, lookup: sqlite3.Connection, limit: int) -> None:
        self._lookup = lookup
        self._limit = limit
        self._index = PendingIndex()
        self.latest = Watermark()  # the newest inbox sequence committed

    def start(self, position: tuple[list[tuple[str, str]], int]) -> None:
        """Takes the entries `load_position` found at open."""
        waiting, self.latest.value = position
        self._index = PendingIndex(waiting)

    def stage_accept(
        self, conn: sqlite3.Connection, entry: InboxEntry, alone: EventRecord | None, now: float
    ) -> Staged[Accepted]:
        """Adds `entry` unless its id waits or was recorded; records `alone` instead when
        nothing of the account waits (see `service.events.log.Inbox.accept`)."""
        event_id = entry.event_id
        if self._index.holds(event_id):
            return Staged(Accepted.DUPLICATE)  # a redelivery of a webhook still waiting
        if conn.execute("SELECT 1 FROM dedup WHERE event_id = ?", (event_id,)).fetchone():
            return Staged(Accepted.REPEATED)  # recorded before
        if alone is not None and not self._index.has_waiting(entry.account_id):
            # Nothing of the account waits for the verifier, so recording it now keeps
            # the account's order; the same transaction the inbox row would have taken.
            return Staged(Accepted.RECORDED, events.stage_records(conn, [alone], now).stored)
        if self._index.is_full(self._limit):
            raise InboxFull(f"{len(self._index)} webhooks are waiting for verification (the limit)")
        inserted = conn.execute(
            "INSERT INTO inbox (event_id, type, account_id, received_at, body, traceparent,"
            " webhook) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event_id,
                entry.type,
                entry.account_id,
                entry.received_at,
                entry.body,
                entry.traceparent,
                _stored_details(entry),
            ),
        )
        self._index.stage(entry)
        seq = int(inserted.lastrowid or 0)
        return Staged(
            Accepted.QUEUED, committed=functools.partial(self._committed, (entry,), (), seq)
        )

    def stage_settle(
        self,
        conn: sqlite3.Connection,
        records: Sequence[EventRecord],
        entries: Sequence[InboxEntry],
        now: float,
    ) -> Staged[list[AppendOutcome]]:
        """Appends `records` and clears `entries`, in the open transaction."""
        staged = events.stage_records(conn, records, now)
        conn.executemany("DELETE FROM inbox WHERE seq = ?", [(entry.seq,) for entry in entries])
        staged.committed = functools.partial(self._committed, (), tuple(entries), 0)
        return staged

    def end_transaction(self) -> None:
        """Forgets what the transaction staged (committed, it is applied already)."""
        self._index.end_transaction()

    def stats(self) -> InboxStats:
        """Entries waiting and the arrival time of the oldest (the first by sequence)."""
        row = self._lookup.execute("SELECT received_at FROM inbox ORDER BY seq LIMIT 1").fetchone()
        return InboxStats(len(self._index), None if row is None else float(row[0]))

    def _committed(
        self, added: Iterable[InboxEntry], removed: Iterable[InboxEntry], latest: int
    ) -> None:
        self._index.committed(added, removed)
        self.latest.advance(latest)  # wakes the verifier
