"""The embedded event log: SQLite in WAL mode with full sync, group-committed appends.

One writing connection stages every write (appends, the inbox, the registry) into a group
commit whose COMMIT alone runs on the writer thread (`writer`). Another connection, on
its own thread, reads batches. A third, on the event loop's thread, answers reads that
walk an index for as many rows as they return (a registry entry, one customer's accounts,
the inbox's oldest entry): in WAL mode a reader never waits for the writer. The newest
events (a few MiB of them) are also kept in memory (the tail), so the many streams that
follow the head of the log share one copy instead of querying SQLite.

One open log writes a file: an OS lock on `<file>.lock`, held until close, refuses any
other (in another process, or in this one).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from service.aio import cancel_all
from service.events.cursors import UNTAGGED, Incarnation
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
from service.events.sqlite import events, inbox, registry
from service.events.sqlite.connections import (
    Reader,
    Statement,
    connect,
    immediate_transaction,
    traced,
)
from service.events.sqlite.files import WriterLock, probe_files, probe_write
from service.events.sqlite.incarnation import HighWaterMark, establish
from service.events.sqlite.options import SqliteOptions
from service.events.sqlite.requests import SqliteRequestRecords
from service.events.sqlite.schema import open_writer
from service.events.sqlite.subscriptions import SqliteSubscriptions
from service.events.sqlite.writer import Writer
from service.events.tail import Tail

_log = logging.getLogger(__name__)


class SqliteEventLog:
    """An `EventLog` in one SQLite file. Create it with `SqliteEventLog.open`."""

    def __init__(
        self,
        options: SqliteOptions,
        lock: WriterLock,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        lookup: sqlite3.Connection,
        *,
        report_failure: ReportFailure,
    ) -> None:
        self.path = options.path
        self._lock = lock
        self._lookup_conn = lookup
        self._retention = options.retention
        self._tail = Tail(options.tail_bytes)
        self._inbox = inbox.Waiting(lookup, options.inbox_limit)
        self._registry = registry.Reads(lookup, self.path)
        self._writer = Writer(
            writer,
            self.path,
            max_batch=options.max_batch,
            report_failure=report_failure,
            published=self._published,
            ended=self._inbox.end_transaction,
        )
        self._reader = Reader(reader, self.path)
        self._pruned_through = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._report_failure = report_failure
        self._incarnation = UNTAGGED  # until `open` reads it
        self._mark: HighWaterMark | None = None

    @classmethod
    async def open(
        cls, options: SqliteOptions, *, report_failure: ReportFailure = ignore_failure
    ) -> SqliteEventLog:
        """Opens (creating if needed) the log at `options.path` and starts its writer;
        `report_failure` hears of each failure the writer or the retention sweep survives
        ("event_log_writer", "event_log_retention").

        Raises `EventLogUnavailable` when another open log holds the file, or the file
        cannot be created or is not an intact SQLite database.
        """
        path = options.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = await asyncio.to_thread(WriterLock.take, path)
        except OSError as error:
            raise EventLogUnavailable(f"cannot create the event log {path}: {error}") from error
        try:
            writer = await asyncio.to_thread(open_writer, path)
            reader = await asyncio.to_thread(connect, path)
            # Short: this one runs on the event loop, which must not wait long for a lock.
            lookup = connect(path, check_same_thread=True, busy_ms=100)
        except sqlite3.Error as error:
            lock.release()
            raise EventLogUnavailable(f"cannot open the event log {path}: {error}") from error
        except BaseException:
            lock.release()
            raise
        log = cls(options, lock, writer, reader, lookup, report_failure=report_failure)
        await log._load()
        log._tasks = [
            asyncio.create_task(log._writer.commit_loop(), name="eventlog-writer"),
            asyncio.create_task(log._retention_loop(), name="eventlog-retention"),
        ]
        return log

    async def _load(self) -> None:
        """Reads what the file holds: positions, incarnation, inbox, registry state."""
        latest, self._pruned_through = await self._writer.run(events.load_positions)
        self._incarnation = await self._writer.run(_establish_incarnation, self.path)
        self._mark = HighWaterMark(self.path, self._incarnation.tag)
        self._mark.advance(latest)
        self._tail.start_at(latest)
        self._inbox.start(await self._writer.run(inbox.load_position))
        self._registry.complete = await self._writer.run(registry.load_complete)

    # --- Log ----------------------------------------------------------------------

    async def append(self, records: Sequence[EventRecord]) -> list[AppendOutcome]:
        """Durably appends records in order; duplicates report their first cursor."""
        self._check_open()
        if not records:
            return []
        return await self._writer.write(
            lambda conn, now: events.stage_records(conn, records, now), len(records)
        )

    async def read(self, after: int, limit: int) -> list[StoredEvent]:
        """Returns up to `limit` events after `after`, from memory when it can."""
        cached = self._tail.read(after, limit)
        if cached is not None:
            return cached
        return await self._reader.run(events.select_after, after, limit)

    @property
    def latest_cursor(self) -> int:
        """The cursor of the newest event (0 for an empty log)."""
        return self._tail.latest

    @property
    def incarnation(self) -> Incarnation:
        """This database's incarnation (see `service.events.sqlite.incarnation`)."""
        return self._incarnation

    async def bounds(self, *, exact: bool = False) -> LogBounds:
        """Returns the pruned-through and latest cursors (kept in memory, always exact)."""
        return LogBounds(pruned_through=self._pruned_through, latest=self._tail.latest)

    def wait_for_append(self, after: int, timeout: float) -> asyncio.Future[None]:
        """Done once an event past `after` is recorded, or after `timeout` seconds."""
        return self._tail.wait_for_append(after, timeout)  # a future: no frame per waiter

    def stop_waits(self) -> None:
        """Ends every current and later `wait_for_append` at once (the server is draining)."""
        self._tail.stop_waits()

    # --- Registry -----------------------------------------------------------------

    async def known_accounts(self) -> dict[str, KnownAccount]:
        """Every account's last recorded state."""
        return await self._reader.run(registry.known_accounts)

    async def registry(self, query: RegistryQuery) -> RegistryPage:
        """Registry entries the query admits, read by one statement at the cursor this
        log has published (entries set by events committed later are left out). Reads
        by account id, or of one customer's accounts, walk an index for as many rows as
        they return: cheaper on the event loop than a hop to the reader thread; any other
        may scan, so it runs there."""
        self._check_open()
        as_of = self._tail.latest if query.as_of is None else query.as_of
        page = self._registry.on_loop(query, as_of)
        if page is not None:
            return page
        return await self._reader.run(self._registry.select, query, as_of)

    async def mark_registry_complete(self) -> None:
        """Records that a full listing of StackOne has been folded into the registry."""
        self._check_open()
        if not self._registry.complete:
            await self._writer.write(registry.stage_complete, 1)
            self._registry.complete = True  # it never turns false again

    # --- Inbox --------------------------------------------------------------------

    async def accept(self, entry: InboxEntry, alone: EventRecord | None = None) -> Accepted:
        """Durably adds a webhook to the inbox unless its id is pending or recorded; with
        `alone`, records that event instead when no entry of the account is pending."""
        self._check_open()
        return await self._writer.write(
            lambda conn, now: self._inbox.stage_accept(conn, entry, alone, now), 1
        )

    async def pending(self, after: int, limit: int) -> list[InboxEntry]:
        """Up to `limit` inbox entries after sequence `after`, oldest first."""
        return await self._reader.run(inbox.select_pending, after, limit)

    async def unsettled(self, entries: Sequence[InboxEntry]) -> list[InboxEntry]:
        """All of them: settling records and clears in one transaction, so an entry still
        in the inbox was never recorded."""
        return list(entries)

    async def settle(
        self, entries: Sequence[InboxEntry], records: Sequence[EventRecord]
    ) -> Settlement:
        """Appends `records` and clears `entries` in one transaction (one writer: nothing
        else records them meanwhile)."""
        self._check_open()
        outcomes = await self._writer.write(
            lambda conn, now: self._inbox.stage_settle(conn, records, entries, now),
            max(1, len(records)),
        )
        return Settlement(outcomes)

    async def wait_for_inbox(self, after: int, timeout: float) -> None:
        """Returns once an entry past `after` was accepted, or after `timeout` seconds."""
        await self._inbox.latest.wait_past(after, timeout)

    async def inbox_stats(self) -> InboxStats:
        """Entries waiting and the arrival time of the oldest (the first by sequence)."""
        self._check_open()
        return self._inbox.stats()

    # --- Request records ----------------------------------------------------------

    def request_records(self, *, window: float, lease: float) -> SqliteRequestRecords:
        """Retryable calls' records (`RequestRecords`), written by this log's writer."""
        return SqliteRequestRecords(self._writer, window=window, lease=lease)

    # --- Subscriptions ------------------------------------------------------------

    async def subscriptions(self) -> SqliteSubscriptions:
        """The subscriptions this log keeps (their tables made if the file lacks them)."""
        self._check_open()
        return await SqliteSubscriptions.open(self._writer, self._reader)

    # --- Lifecycle ----------------------------------------------------------------

    async def check_writable(self) -> None:
        """Writes and syncs as an append would; raises `EventLogUnavailable` if it fails."""
        self._check_open()
        await self._writer.run(probe_write, self.path)

    async def enforce_retention(self, now: float | None = None) -> int:
        """Removes events past the retention policy; returns the new pruned-through cursor."""
        now = time.time() if now is None else now
        target = await self._writer.run(
            events.prune_target, now, self._retention, self._tail.latest, self._pruned_through
        )
        if target > self._pruned_through:
            # Published before the rows go, so a reader that sees a gap also sees why.
            self._pruned_through = target
            self._tail.prune(target)
        await self._writer.run(
            events.delete_pruned, self._pruned_through, now, self._retention.dedup_window
        )
        return self._pruned_through

    async def close(self) -> None:
        """Commits what is pending, stops background work and closes the file."""
        if self._closed:
            return
        self._closed = True
        await self._writer.drain()
        await cancel_all(self._tasks)
        await self._writer.close()
        await self._reader.close()
        self._lookup_conn.close()
        if self._mark is not None:
            self._mark.close()
        for probe in probe_files(self.path):
            probe.unlink(missing_ok=True)
        self._lock.release()
        self._tail.wake_waiters()

    # --- Seams for tests and benchmarks -------------------------------------------

    @property
    def commits(self) -> int:
        """Transactions committed for appends, inbox writes and settles: with group
        commit, far fewer than the writes they carried."""
        return self._writer.commits

    @contextmanager
    def statements(self) -> Iterator[list[Statement]]:
        """Every SQL statement the log runs from here on, with the connection ("writer",
        "reader" or "lookup") and the thread that ran it: what a call costs in SQLite."""
        connections = {
            "writer": self._writer.conn,
            "reader": self._reader.conn,
            "lookup": self._lookup_conn,
        }
        with traced(connections) as statements:
            yield statements

    async def pragma(self, name: str, value: int | None = None) -> int:
        """An integer PRAGMA of the writing connection, set to `value` first when given,
        between transactions (how a test caps the file's pages: a full disk, without one)."""
        if not name.isidentifier():
            raise ValueError(f"not a PRAGMA name: {name!r}")
        statement = f"PRAGMA {name}" if value is None else f"PRAGMA {name} = {int(value)}"

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(statement).fetchone()
            return 0 if row is None else int(row[0])

        return await self._writer.run(run)

    # --- Internals ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogUnavailable("the event log is closed")

    def _published(self, stored: list[StoredEvent]) -> None:
        """A commit's events: marked, then served (before any subscriber sees a cursor)."""
        if stored and self._mark is not None:
            self._mark.advance(stored[-1].cursor)
        self._tail.publish(stored)

    async def _retention_loop(self) -> None:
        interval = self._retention.sweep_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.enforce_retention()
            except Exception:  # whatever it was, the next sweep tries again
                _log.exception("event log retention sweep failed; retrying in %gs", interval)
                self._report_failure("event_log_retention")


def _establish_incarnation(conn: sqlite3.Connection, path: Path) -> Incarnation:
    with immediate_transaction(conn):
        return establish(conn, path)
