"""Subscriptions kept in the log's file (`Subscriptions`): their settings, positions,
outstanding attempts and parked events. Every change is staged into the writer's
transaction, so it is as durable as an append (fsync'd by the same group commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from service.events.sqlite.connections import Reader
from service.events.sqlite.writer import Staged, Writer
from service.events.subscriptions import (
    Attempt,
    Filters,
    Parked,
    Progress,
    Settled,
    SubscriptionExists,
    SubscriptionRecord,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client TEXT NOT NULL,
    name TEXT NOT NULL,
    filters TEXT NOT NULL,
    owners TEXT,
    ack_deadline REAL NOT NULL,
    max_deliveries INTEGER NOT NULL,
    created_at REAL NOT NULL,
    position INTEGER NOT NULL,
    UNIQUE (client, name)
);
-- Cursors acknowledged (or parked) above the position: acks of different accounts arrive
-- out of cursor order; the position moves only past a contiguous run.
CREATE TABLE IF NOT EXISTS subscription_done (
    subscription INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    PRIMARY KEY (subscription, cursor)
) WITHOUT ROWID;
-- Deliveries made of events not yet acknowledged, so that the maximum survives a restart.
CREATE TABLE IF NOT EXISTS subscription_attempts (
    subscription INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (subscription, cursor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscription_parked (
    subscription INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    parked_at REAL NOT NULL,
    redriven INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription, cursor)
) WITHOUT ROWID;
"""
_COLUMNS = "id, client, name, filters, owners, ack_deadline, max_deliveries, created_at"


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def _record(row: Sequence[object]) -> SubscriptionRecord:
    owners = None if row[4] is None else tuple(orjson.loads(str(row[4])))
    return SubscriptionRecord(
        id=int(str(row[0])),
        client=str(row[1]),
        name=str(row[2]),
        filters=Filters.from_json(str(row[3])),
        owners=owners,
        ack_deadline=float(str(row[5])),
        max_deliveries=int(str(row[6])),
        created_at=float(str(row[7])),
    )


class SqliteSubscriptions:
    """The `Subscriptions` role on a SQLite log. Make it with `open`."""

    def __init__(self, writer: Writer, reader: Reader) -> None:
        self._writer = writer
        self._reader = reader

    @classmethod
    async def open(cls, writer: Writer, reader: Reader) -> SqliteSubscriptions:
        """Creates the tables a log written before subscriptions lacks."""
        await writer.run(_create_tables)
        return cls(writer, reader)

    async def create(self, record: SubscriptionRecord, position: int) -> SubscriptionRecord:
        """Stores a new subscription at `position`; `record.id` is assigned."""

        def stage(conn: sqlite3.Connection, now: float) -> Staged[SubscriptionRecord]:
            owners = None if record.owners is None else orjson.dumps(record.owners).decode()
            try:
                new_id = conn.execute(
                    "INSERT INTO subscriptions (client, name, filters, owners, ack_deadline,"
                    " max_deliveries, created_at, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.client,
                        record.name,
                        record.filters.to_json(),
                        owners,
                        record.ack_deadline,
                        record.max_deliveries,
                        now,
                        position,
                    ),
                ).lastrowid
            except sqlite3.IntegrityError:
                return Staged(record)  # the name is taken: id 0 says so
            return Staged(_replace_id(record, int(new_id or 0), now))

        created = await self._writer.write(stage, 1)
        if created.id == 0:
            raise SubscriptionExists(record.name)
        return created

    async def all(self) -> list[SubscriptionRecord]:
        """Every subscription of every client."""

        def select(conn: sqlite3.Connection) -> list[SubscriptionRecord]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM subscriptions ORDER BY id").fetchall()  # noqa: S608 - constant column list
            return [_record(row) for row in rows]

        return await self._reader.run(select)

    async def update(self, subscription: int, ack_deadline: float, max_deliveries: int) -> None:
        """Sets a subscription's delivery settings."""
        await self._write(
            "UPDATE subscriptions SET ack_deadline = ?, max_deliveries = ? WHERE id = ?",
            (ack_deadline, max_deliveries, subscription),
        )

    async def delete(self, subscription: int) -> None:
        """Removes a subscription and everything kept for it."""

        def stage(conn: sqlite3.Connection, now: float) -> Staged[None]:
            for table in ("subscriptions", "subscription_done", "subscription_attempts"):
                column = "id" if table == "subscriptions" else "subscription"
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (subscription,))  # noqa: S608 - constant names
            conn.execute("DELETE FROM subscription_parked WHERE subscription = ?", (subscription,))
            return Staged(None)

        await self._writer.write(stage, 1)

    async def progress(self, subscription: int) -> Progress:
        """What the dispatcher resumes from."""

        def select(conn: sqlite3.Connection) -> Progress:
            (position,) = conn.execute(
                "SELECT position FROM subscriptions WHERE id = ?", (subscription,)
            ).fetchone()
            done = conn.execute(
                "SELECT cursor FROM subscription_done WHERE subscription = ?", (subscription,)
            ).fetchall()
            attempts = conn.execute(
                "SELECT cursor, attempts FROM subscription_attempts WHERE subscription = ?",
                (subscription,),
            ).fetchall()
            parked = conn.execute(
                "SELECT cursor, account_id, attempts, parked_at, redriven"
                " FROM subscription_parked WHERE subscription = ? ORDER BY cursor",
                (subscription,),
            ).fetchall()
            return Progress(
                position=int(position),
                done={int(row[0]) for row in done},
                attempts={int(row[0]): int(row[1]) for row in attempts},
                parked=[
                    Parked(int(c), str(a), int(n), float(t), bool(r)) for c, a, n, t, r in parked
                ],
            )

        return await self._reader.run(select)

    async def record_attempts(self, subscription: int, attempts: Sequence[Attempt]) -> None:
        """Records deliveries about to be sent."""

        def stage(conn: sqlite3.Connection, now: float) -> Staged[None]:
            conn.executemany(
                "INSERT OR REPLACE INTO subscription_attempts"
                " (subscription, cursor, account_id, attempts) VALUES (?, ?, ?, ?)",
                [(subscription, a.cursor, a.account_id, a.attempt) for a in attempts],
            )
            return Staged(None)

        await self._writer.write(stage, max(1, len(attempts)))

    async def record_settled(self, subscription: int, settled: Settled) -> None:
        """Records acks and parkings, and the position they let the subscription reach."""

        def stage(conn: sqlite3.Connection, now: float) -> Staged[None]:
            acked = [(subscription, cursor) for cursor in settled.acked]
            parked = [(subscription, p.cursor) for p in settled.parked]
            conn.executemany(
                "DELETE FROM subscription_attempts WHERE subscription = ? AND cursor = ?",
                acked + parked,
            )
            # An acked redriven event leaves the parked ones; a parked one joins them.
            conn.executemany(
                "DELETE FROM subscription_parked WHERE subscription = ? AND cursor = ?", acked
            )
            conn.executemany(
                "INSERT OR REPLACE INTO subscription_parked (subscription, cursor, account_id,"
                " attempts, parked_at, redriven) VALUES (?, ?, ?, ?, ?, 0)",
                [
                    (subscription, p.cursor, p.account_id, p.attempts, p.parked_at)
                    for p in settled.parked
                ],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO subscription_done (subscription, cursor) VALUES (?, ?)",
                acked + parked,
            )
            if settled.position is not None:
                _stage_position(conn, subscription, settled.position)
            return Staged(None)

        await self._writer.write(stage, max(1, len(settled.acked) + len(settled.parked)))

    async def seek(self, subscription: int, position: int) -> None:
        """Moves the subscription to `position`, forgetting its acks and attempts (parked
        events stay parked)."""

        def stage(conn: sqlite3.Connection, now: float) -> Staged[None]:
            conn.execute("DELETE FROM subscription_done WHERE subscription = ?", (subscription,))
            conn.execute(
                "DELETE FROM subscription_attempts WHERE subscription = ?", (subscription,)
            )
            conn.execute(
                "UPDATE subscriptions SET position = ? WHERE id = ?", (position, subscription)
            )
            return Staged(None)

        await self._writer.write(stage, 1)

    async def redrive(self, subscription: int) -> None:
        """Marks the parked events to be delivered again."""
        await self._write(
            "UPDATE subscription_parked SET redriven = 1 WHERE subscription = ?",
            (subscription,),
        )

    async def _write(self, sql: str, parameters: Sequence[object]) -> None:
        def stage(conn: sqlite3.Connection, now: float) -> Staged[None]:
            conn.execute(sql, parameters)
            return Staged(None)

        await self._writer.write(stage, 1)


def _stage_position(conn: sqlite3.Connection, subscription: int, position: int) -> None:
    conn.execute("UPDATE subscriptions SET position = ? WHERE id = ?", (position, subscription))
    conn.execute(
        "DELETE FROM subscription_done WHERE subscription = ? AND cursor <= ?",
        (subscription, position),
    )


def _replace_id(record: SubscriptionRecord, new_id: int, now: float) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=new_id,
        client=record.client,
        name=record.name,
        filters=record.filters,
        owners=record.owners,
        ack_deadline=record.ack_deadline,
        max_deliveries=record.max_deliveries,
        created_at=now,
    )
