"""Retryable calls' request records in the log's SQLite file (`RequestRecords`).

Every claim is a write staged into the writer's group commit, so the one writer decides
between two calls racing on one key: the first inserts the claim, the second reads it.
Records older than the window are deleted as claims are made (an index on `claimed_at`
keeps that to the rows it removes).
"""

from __future__ import annotations

import sqlite3

from service.events.log import RequestClaim
from service.events.sqlite.writer import Staged, Writer


class SqliteRequestRecords:
    """`RequestRecords` in the `requests` table, written by the log's writer."""

    def __init__(self, writer: Writer, *, window: float, lease: float) -> None:
        self._writer = writer
        self._window = window
        self._lease = lease

    async def claim(self, key: str, fingerprint: str) -> RequestClaim:
        """Claims `key`, or returns the live claim another call holds on it."""

        def stage(conn: sqlite3.Connection, now: float) -> Staged[RequestClaim]:
            conn.execute("DELETE FROM requests WHERE claimed_at < ?", (now - self._window,))
            row = conn.execute(
                "SELECT fingerprint, claimed_at, answer FROM requests WHERE key = ?", (key,)
            ).fetchone()
            if row is not None and (row[2] is not None or row[1] >= now - self._lease):
                return Staged(RequestClaim(row[0], answer=row[2]))
            conn.execute(
                "INSERT OR REPLACE INTO requests (key, fingerprint, claimed_at, answer)"
                " VALUES (?, ?, ?, NULL)",
                (key, fingerprint, now),
            )
            return Staged(RequestClaim(fingerprint, mine=True))

        return await self._writer.write(stage, 1)

    async def answer(self, key: str, fingerprint: str, answer: bytes) -> None:
        """Records the answer under this call's claim."""

        def stage(conn: sqlite3.Connection, now: float) -> Staged[None]:
            conn.execute(
                "UPDATE requests SET answer = ? WHERE key = ? AND fingerprint = ?",
                (answer, key, fingerprint),
            )
            return Staged(None)

        await self._writer.write(stage, 1)

    async def release(self, key: str) -> None:
        """Drops an unanswered claim, so that a retry asks StackOne."""

        def stage(conn: sqlite3.Connection, now: float) -> Staged[None]:
            conn.execute("DELETE FROM requests WHERE key = ? AND answer IS NULL", (key,))
            return Staged(None)

        await self._writer.write(stage, 1)

    async def close(self) -> None:
        """Nothing of its own: the log closes the writer."""
