"""The events and their dedup keys: an append, staged into the writer's transaction with
the registry entry each event sets; reads after a cursor; and retention's statements."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from service.events.model import (
    AppendOutcome,
    EventRecord,
    KnownAccount,
    Retention,
    StoredEvent,
    already_known,
)
from service.events.registry import enriched
from service.events.sqlite import registry
from service.events.sqlite.connections import immediate_transaction
from service.events.sqlite.writer import Staged

_COLUMNS = "cursor, event_id, type, account_id, provider, origin_owner_id, recorded_at, body"


def stage_records(
    conn: sqlite3.Connection, records: Sequence[EventRecord], now: float
) -> Staged[list[AppendOutcome]]:
    """The statements that append `records` (inside the open transaction): each new one as
    an event, its ids as dedup keys, and its account's registry entry."""
    outcomes: list[AppendOutcome] = []
    stored: list[StoredEvent] = []
    for record in records:
        seen = conn.execute(
            "SELECT cursor FROM dedup WHERE event_id = ?", (record.event_id,)
        ).fetchone()
        if seen is not None:
            outcomes.append(AppendOutcome(record.event_id, int(seen[0]), duplicate=True))
            continue
        previous = registry.previous(conn, record.account_id)
        if already_known(record, None if previous is None else previous.known):
            # Remembered too, so a redelivery is dropped without another check.
            _remember_ids(conn, record, 0, now)
            outcomes.append(AppendOutcome(record.event_id, 0, duplicate=True))
            continue
        record = enriched(record, previous.entry if previous else None)
        cursor = conn.execute(
            "INSERT INTO events (event_id, type, account_id, provider, origin_owner_id,"
            " recorded_at, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.event_id,
                record.type,
                record.account_id,
                record.provider,
                record.origin_owner_id,
                now,
                record.body,
            ),
        ).lastrowid
        if cursor is None:  # an INSERT into a rowid table always has one
            raise sqlite3.OperationalError("the event INSERT returned no rowid")
        _remember_ids(conn, record, cursor, now)
        event = record.stored(cursor, now)
        registry.stage_entry(conn, event, KnownAccount.recorded(record))
        outcomes.append(AppendOutcome(record.event_id, cursor, duplicate=False))
        stored.append(event)
    return Staged(outcomes, stored)


def _remember_ids(conn: sqlite3.Connection, record: EventRecord, cursor: int, now: float) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO dedup (event_id, cursor, recorded_at) VALUES (?, ?, ?)",
        [(event_id, cursor, now) for event_id in record.ids],
    )


def select_after(conn: sqlite3.Connection, after: int, limit: int) -> list[StoredEvent]:
    """Up to `limit` events with cursors above `after`, in order."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE cursor > ? ORDER BY cursor LIMIT ?",  # noqa: S608 - constant column list
        (after, limit),
    ).fetchall()
    return [StoredEvent(*row) for row in rows]


def load_positions(conn: sqlite3.Connection) -> tuple[int, int]:
    """The latest cursor ever issued, and the pruned-through cursor."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    pruned = conn.execute("SELECT value FROM meta WHERE key = 'pruned_through'").fetchone()
    return (int(row[0]) if row else 0, int(pruned[0]) if pruned else 0)


def prune_target(
    conn: sqlite3.Connection, now: float, retention: Retention, latest: int, pruned_through: int
) -> int:
    """The cursor through which `retention` removes events at `now`."""
    (by_age,) = conn.execute(
        "SELECT coalesce(max(cursor), 0) FROM events WHERE recorded_at < ?",
        (now - retention.max_age,),
    ).fetchone()
    by_count = 0
    if retention.max_count is not None:
        by_count = latest - retention.max_count
    return max(int(by_age), by_count, pruned_through)


def delete_pruned(
    conn: sqlite3.Connection, pruned_through: int, now: float, dedup_window: float
) -> None:
    """Removes the events through `pruned_through`, and the dedup keys and tombstones older
    than `dedup_window`, in one transaction."""
    with immediate_transaction(conn):
        conn.execute("DELETE FROM events WHERE cursor <= ?", (pruned_through,))
        conn.execute("DELETE FROM dedup WHERE recorded_at < ?", (now - dedup_window,))
        # A deleted account's tombstone is kept as long as its webhooks' ids.
        conn.execute(
            "DELETE FROM accounts WHERE deleted = 1 AND recorded_at > 0 AND recorded_at < ?",
            (now - dedup_window,),
        )
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_through', ?)",
            (pruned_through,),
        )
