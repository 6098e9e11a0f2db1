"""The embedded event log: SQLite in WAL mode with full sync, group-committed appends.

Appends that arrive while a commit is in flight are staged together in the next
transaction on the event loop's thread (in-memory B-tree work, cheaper than handing each
statement to another thread and back), and only the COMMIT, which waits for the fsync,
runs on the writer thread: durability costs one fsync per batch, not per event, and the
loop never waits for the disk. A lock keeps every use of the writing connection (appends,
retention, the writability probe) one at a time. Another connection, on its own thread,
reads batches. A third, on the event loop's thread, answers the per-webhook duplicate
check: a primary-key lookup in WAL mode never waits for the writer. The newest events (a
few MiB of them) are also kept in memory (the tail), so the many streams that follow the
head of the log share one copy instead of querying SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from service.events.model import (
    AppendOutcome,
    EventLogUnavailable,
    EventRecord,
    KnownAccount,
    LogBounds,
    StoredEvent,
    already_known,
)
from service.events.tail import Tail

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    account_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    origin_owner_id TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at);
-- Kept by age only, so a retry is recognised even after count-based retention
-- removed the event it repeats.
CREATE TABLE IF NOT EXISTS dedup (
    event_id TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    recorded_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_recorded_at ON dedup (recorded_at);
-- The last recorded state of each account, for reconciliation with StackOne.
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    source TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_COLUMNS = "cursor, event_id, type, account_id, provider, origin_owner_id, recorded_at, body"
_ACCOUNT_COLUMNS = "account_id, status, updated_at, deleted, source"


def _known(row: tuple[str, str, str, int, str]) -> KnownAccount:
    return KnownAccount(row[0], row[1], row[2], bool(row[3]), row[4])


@dataclass(frozen=True, slots=True)
class Retention:
    """How long events and dedup keys are kept.

    Attributes:
        max_age: seconds an event is kept.
        max_count: most events kept; None keeps any number.
        dedup_window: seconds an event id is remembered for de-duplication.
        sweep_interval: seconds between retention sweeps.
    """

    max_age: float = 7 * 24 * 3600
    max_count: int | None = None
    dedup_window: float = 7 * 24 * 3600
    sweep_interval: float = 60.0


@dataclass(slots=True)
class _PendingAppend:
    records: Sequence[EventRecord]
    done: asyncio.Future[list[AppendOutcome]]


def _connect(
    path: Path, *, check_same_thread: bool = False, busy_ms: int = 5000
) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (fsync'd WAL) before append() returns and the
    # gateway acknowledges the webhook.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn


class SqliteEventLog:
    """An `EventLog` in one SQLite file. Create it with `SqliteEventLog.open`."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        lookup: sqlite3.Connection,
        retention: Retention,
        *,
        tail_bytes: int,
        max_batch: int,
    ) -> None:
        self.path = path
        self._writer_conn = writer
        self._reader_conn = reader
        self._lookup_conn = lookup
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="eventlog-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="eventlog-read")
        self._retention = retention
        self._max_batch = max_batch
        self._pending: asyncio.Queue[_PendingAppend] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._pruned_through = 0
        self._tail = Tail(tail_bytes)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        retention: Retention | None = None,
        *,
        tail_bytes: int = 4 << 20,
        max_batch: int = 1024,
    ) -> SqliteEventLog:
        """Opens (creating if needed) the log at `path` and starts its writer."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await asyncio.to_thread(_connect, path)
        await asyncio.to_thread(writer.executescript, _SCHEMA)
        reader = await asyncio.to_thread(_connect, path)
        # Short: this one runs on the event loop, which must not wait long for a lock.
        lookup = _connect(path, check_same_thread=True, busy_ms=100)
        log = cls(
            path,
            writer,
            reader,
            lookup,
            retention or Retention(),
            tail_bytes=tail_bytes,
            max_batch=max_batch,
        )
        latest, log._pruned_through = await log._on_writer(log._load_positions)
        log._tail.start_at(latest)
        log._tasks = [
            asyncio.create_task(log._write_loop(), name="eventlog-writer"),
            asyncio.create_task(log._retention_loop(), name="eventlog-retention"),
        ]
        return log

    # --- EventLog interface -------------------------------------------------------

    async def append(self, records: Sequence[EventRecord]) -> list[AppendOutcome]:
        """Durably appends records in order; duplicates report their first cursor."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        if not records:
            return []
        done: asyncio.Future[list[AppendOutcome]] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(_PendingAppend(records, done))
        return await done

    async def read(self, after: int, limit: int) -> list[StoredEvent]:
        """Returns up to `limit` events after `after`, from memory when it can."""
        cached = self._tail.read(after, limit)
        if cached is not None:
            return cached
        return await self._on_reader(self._select_after, after, limit)

    @property
    def latest_cursor(self) -> int:
        """The cursor of the newest event (0 for an empty log)."""
        return self._tail.latest

    async def bounds(self, *, exact: bool = False) -> LogBounds:
        """Returns the pruned-through and latest cursors (kept in memory, always exact)."""
        return LogBounds(pruned_through=self._pruned_through, latest=self._tail.latest)

    async def wait_for_append(self, after: int, timeout: float) -> None:
        """Returns once an event past `after` is recorded, or after `timeout` seconds."""
        await self._tail.wait_for_append(after, timeout)

    def stop_waits(self) -> None:
        """Ends every current and later `wait_for_append` at once (the server is draining)."""
        self._tail.stop_waits()

    async def contains(self, event_id: str) -> bool:
        """True when `event_id` was recorded within the dedup window."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        try:
            row = self._lookup_conn.execute(
                "SELECT 1 FROM dedup WHERE event_id = ?", (event_id,)
            ).fetchone()
        except sqlite3.Error as error:
            raise EventLogUnavailable(f"the event log at {self.path} failed: {error}") from error
        return row is not None

    async def known_accounts(self) -> dict[str, KnownAccount]:
        """Every account's last recorded state."""
        rows = await self._on_reader(
            lambda: self._reader_conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts").fetchall()  # noqa: S608 - constant column list
        )
        return {row[0]: _known(row) for row in rows}

    async def check_writable(self) -> None:
        """Takes and releases the write lock to prove the file is writable."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        await self._on_writer(self._probe_write)

    async def close(self) -> None:
        """Commits what is pending, stops background work and closes the file."""
        if self._closed:
            return
        self._closed = True
        await self._pending.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._on_writer(self._writer_conn.close)
        await self._on_reader(self._reader_conn.close)
        self._lookup_conn.close()
        self._writer.shutdown()
        self._reader.shutdown()
        self._tail.wake_waiters()

    # --- Retention ----------------------------------------------------------------

    async def enforce_retention(self, now: float | None = None) -> int:
        """Removes events past the retention policy; returns the new pruned-through cursor."""
        now = time.time() if now is None else now
        target = await self._on_writer(self._prune_target, now)
        if target > self._pruned_through:
            # Published before the rows go, so a reader that sees a gap also sees why.
            self._pruned_through = target
            self._tail.prune(target)
        await self._on_writer(self._delete_pruned, self._pruned_through, now)
        return self._pruned_through

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retention.sweep_interval)
            try:
                await self.enforce_retention()
            except EventLogUnavailable:
                _log.exception("event log retention sweep failed; retrying next interval")

    def _prune_target(self, now: float) -> int:
        (by_age,) = self._writer_conn.execute(
            "SELECT coalesce(max(cursor), 0) FROM events WHERE recorded_at < ?",
            (now - self._retention.max_age,),
        ).fetchone()
        by_count = 0
        if self._retention.max_count is not None:
            by_count = self._tail.latest - self._retention.max_count
        return max(int(by_age), by_count, self._pruned_through)

    def _delete_pruned(self, pruned_through: int, now: float) -> None:
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM events WHERE cursor <= ?", (pruned_through,))
            conn.execute(
                "DELETE FROM dedup WHERE recorded_at < ?", (now - self._retention.dedup_window,)
            )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_through', ?)",
                (pruned_through,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # --- Writer -------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._pending.get()]
            count = len(batch[0].records)
            while count < self._max_batch and not self._pending.empty():
                batch.append(self._pending.get_nowait())
                count += len(batch[-1].records)
            records = [record for pending in batch for record in pending.records]
            try:
                async with self._write_lock:
                    try:
                        outcomes, stored = self._stage_batch(records)
                    except sqlite3.Error as error:
                        raise EventLogUnavailable(f"{self.path}: {error}") from error
                    await self._run(self._writer, self._commit)
            except (EventLogUnavailable, OSError) as error:
                _log.error("event log append failed: %s", error)
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(
                            EventLogUnavailable(f"the event log could not append: {error}")
                        )
            else:
                self._tail.publish(stored)
                offset = 0
                for pending in batch:
                    size = len(pending.records)
                    if not pending.done.done():
                        pending.done.set_result(outcomes[offset : offset + size])
                    offset += size
            for _ in batch:
                self._pending.task_done()

    def _stage_batch(
        self, records: Sequence[EventRecord]
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        """Runs the batch's statements in a new transaction, left open for `_commit`."""
        conn = self._writer_conn
        now = time.time()
        outcomes: list[AppendOutcome] = []
        stored: list[StoredEvent] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                seen = conn.execute(
                    "SELECT cursor FROM dedup WHERE event_id = ?", (record.event_id,)
                ).fetchone()
                if seen is not None:
                    outcomes.append(AppendOutcome(record.event_id, int(seen[0]), duplicate=True))
                    continue
                if already_known(record, self._known_in_transaction(record.account_id)):
                    # Remembered too, so a redelivery is dropped without another check.
                    conn.execute(
                        "INSERT INTO dedup (event_id, cursor, recorded_at) VALUES (?, 0, ?)",
                        (record.event_id, now),
                    )
                    outcomes.append(AppendOutcome(record.event_id, 0, duplicate=True))
                    continue
                # In StoredEvent's field order, after the cursor.
                row = (
                    record.event_id,
                    record.type,
                    record.account_id,
                    record.provider,
                    record.origin_owner_id,
                    now,
                    record.body,
                )
                cursor = conn.execute(
                    "INSERT INTO events (event_id, type, account_id, provider, origin_owner_id,"
                    " recorded_at, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                ).lastrowid
                assert cursor is not None  # an INSERT into a rowid table always has one
                conn.execute(
                    "INSERT INTO dedup (event_id, cursor, recorded_at) VALUES (?, ?, ?)",
                    (record.event_id, cursor, now),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO accounts (account_id, status, updated_at, deleted,"
                    " source) VALUES (?, ?, ?, ?, ?)",
                    (
                        record.account_id,
                        record.account_status,
                        record.account_updated_at,
                        record.type == "account.deleted",
                        record.source,
                    ),
                )
                outcomes.append(AppendOutcome(record.event_id, cursor, duplicate=False))
                stored.append(StoredEvent(cursor, *row))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes, stored

    def _commit(self) -> None:
        try:
            self._writer_conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self._writer_conn.execute("ROLLBACK")
            raise

    def _known_in_transaction(self, account_id: str) -> KnownAccount | None:
        row = self._writer_conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ?",  # noqa: S608 - constant column list
            (account_id,),
        ).fetchone()
        return None if row is None else _known(row)

    def _load_positions(self) -> tuple[int, int]:
        conn = self._writer_conn
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        pruned = conn.execute("SELECT value FROM meta WHERE key = 'pruned_through'").fetchone()
        return (int(row[0]) if row else 0, int(pruned[0]) if pruned else 0)

    def _probe_write(self) -> None:
        self._writer_conn.execute("BEGIN IMMEDIATE")
        self._writer_conn.execute("ROLLBACK")

    def _select_after(self, after: int, limit: int) -> list[StoredEvent]:
        rows = self._reader_conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE cursor > ? ORDER BY cursor LIMIT ?",  # noqa: S608 - constant column list
            (after, limit),
        ).fetchall()
        return [StoredEvent(*row) for row in rows]

    async def _on_writer(self, fn: Callable[..., _T], *args: object) -> _T:
        async with self._write_lock:
            return await self._run(self._writer, fn, *args)

    async def _on_reader(self, fn: Callable[..., _T], *args: object) -> _T:
        return await self._run(self._reader, fn, *args)

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[..., _T], *args: object) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except RuntimeError as error:  # the executor is shut down: the log was closed
            raise EventLogUnavailable("the event log is closed") from error
        except sqlite3.Error as error:
            raise EventLogUnavailable(f"the event log at {self.path} failed: {error}") from error
