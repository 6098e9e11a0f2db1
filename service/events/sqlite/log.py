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

One open log writes a file: an OS lock on `<file>.lock`, held until close, refuses any
other (in another process, or in this one).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import ParseResult

import orjson

from service.aio import cancel_all
from service.events.cursors import UNTAGGED, Incarnation
from service.events.log import Backend, ReportFailure, ignore_failure
from service.events.model import (
    Accepted,
    AppendOutcome,
    EventLogUnavailable,
    EventRecord,
    InboxEntry,
    InboxFull,
    InboxStats,
    KnownAccount,
    LogBounds,
    Retention,
    Settlement,
    StoredEvent,
    Webhook,
    already_known,
)
from service.events.registry import (
    RegisteredAccount,
    RegistryPage,
    RegistryQuery,
    enriched,
    registered,
)
from service.events.sqlite import incarnation as sqlite_incarnation
from service.events.tail import DEFAULT_TAIL_BYTES, Tail, Watermark

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_REGISTRY_COMPLETE = "registry_complete"

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
-- The registry: each account as its last recorded event left it, written by the same
-- transaction as that event (the columns after `source` came with the registry, see
-- _REGISTRY_COLUMNS; a log written before it gains them at open).
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    source TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
-- Webhooks accepted at the door and not yet verified; AUTOINCREMENT so that a sequence
-- is never reused after its entry is cleared (the verifier reads after the last it saw).
-- No index on event_id: random keys would dirty a page per webhook in every commit; the
-- one writer keeps the pending ids in memory instead.
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    account_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    body BLOB NOT NULL
);
-- Written by the readiness probe, so that "ready" means a write just succeeded.
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, checked_at REAL, room BLOB);
"""
_COLUMNS = "cursor, event_id, type, account_id, provider, origin_owner_id, recorded_at, body"
_ACCOUNT_COLUMNS = "account_id, status, updated_at, deleted, source"
_REGISTRY_COLUMNS = {
    "cursor": "INTEGER NOT NULL DEFAULT 0",
    "provider": "TEXT NOT NULL DEFAULT ''",
    "origin_owner_id": "TEXT NOT NULL DEFAULT ''",
    "account": "BLOB NOT NULL DEFAULT x''",
    "recorded_at": "REAL NOT NULL DEFAULT 0",
}
_REGISTERED = "account_id, cursor, deleted, account, provider, origin_owner_id, status, recorded_at"
_ONE_REGISTERED = f"SELECT {_REGISTERED} FROM accounts WHERE account_id = ?"  # noqa: S608 - constant column list
_INBOX_COLUMNS = "seq, event_id, type, account_id, received_at, body, traceparent, webhook"
# Columns the inbox gained after its first release; a log written before gains them at open
# (`webhook`, the parsed webhook as JSON, is '' in the entries written before it).
_LATER_INBOX_COLUMNS = {
    "traceparent": "TEXT NOT NULL DEFAULT ''",
    "webhook": "TEXT NOT NULL DEFAULT ''",
}
DEFAULT_INBOX_LIMIT = 100_000
# Start-up checks the file's structure for at most this long (about 250 MB read cold).
INTEGRITY_CHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Previous:
    """An account's row before an append: its registry entry (None for a row written
    before the registry) and what reconciliation compares."""

    entry: RegisteredAccount | None
    known: KnownAccount


def _known(row: tuple[str, str, str, int, str]) -> KnownAccount:
    return KnownAccount(row[0], row[1], row[2], bool(row[3]), row[4])


@dataclass(slots=True)
class _Staged(Generic[_T]):
    """What one write did inside the open transaction, applied once it commits."""

    result: _T
    stored: list[StoredEvent] = field(default_factory=list)
    pending_added: tuple[InboxEntry, ...] = ()
    pending_removed: tuple[InboxEntry, ...] = ()
    inbox_latest: int = 0


@dataclass(slots=True)
class _PendingWrite(Generic[_T]):
    """A write waiting for the next group commit: `stage` runs its statements."""

    stage: Callable[[float], _Staged[_T]]
    weight: int
    done: asyncio.Future[_T]


class _PendingIndex:
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


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Refuses a damaged file: SQLite's quick_check, cut short on a file too big to read
    within `INTEGRITY_CHECK_SECONDS` (a slow start is worse than a later read error)."""
    deadline = time.monotonic() + INTEGRITY_CHECK_SECONDS
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 100_000)
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as error:
        if error.sqlite_errorname == "SQLITE_CORRUPT":  # too damaged to list the problems
            problems = [str(error)]
        elif error.sqlite_errorname == "SQLITE_INTERRUPT":
            _log.warning(
                "the integrity check of %s stopped after %gs; starting without it",
                path,
                INTEGRITY_CHECK_SECONDS,
            )
            return
        else:
            raise
    finally:
        conn.set_progress_handler(None, 0)
    if problems != ["ok"]:
        found = "; ".join(" ".join(problem.split()) for problem in problems)
        raise EventLogUnavailable(
            f"the event log {path} is damaged ({found}); restore it from a backup or move it "
            "aside to start a new log"
        )


def _add_registry_columns(conn: sqlite3.Connection) -> None:
    """Brings a log written before the registry to its columns (each account's entry
    then fills in with its next event, and reconciliation's listing)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(accounts)")}
    for name, declaration in _REGISTRY_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE accounts ADD COLUMN {name} {declaration}")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS accounts_owner ON accounts (origin_owner_id, account_id)"
    )


def _add_inbox_columns(conn: sqlite3.Connection) -> None:
    """Brings an inbox written by an earlier release to its columns (its entries keep no
    trace, and only their raw body: see `InboxEntry.from_raw_body_only`)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(inbox)")}
    for name, declaration in _LATER_INBOX_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE inbox ADD COLUMN {name} {declaration}")


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
    """An inbox row as `_stage_accept` wrote it (`details` '': an earlier release's)."""
    stored = orjson.loads(details) if details else None
    return InboxEntry(
        seq,
        Webhook.stored(event_id, event_type, account_id, stored),
        received_at,
        body,
        traceparent,
        from_raw_body_only=not details,
    )


def _one_owner_only(query: RegistryQuery) -> bool:
    """A read of one customer's accounts with no other filter: the owner index yields
    them in order, each row scanned is returned (but tombstones), so it stays small."""
    return len(query.origin_owner_ids) == 1 and not (query.providers or query.statuses)


def _registered(row: tuple[str, int, int, bytes, str, str, str, float]) -> RegisteredAccount:
    account_id, cursor, deleted, account, provider, owner, status, recorded_at = row
    return RegisteredAccount(
        account_id, int(cursor), bool(deleted), bytes(account), provider, owner, status,
        float(recorded_at),
    )  # fmt: skip


def _open_writer(path: Path) -> sqlite3.Connection:
    """The writing connection, once the file proves to be an intact SQLite database."""
    if path.exists() and path.stat().st_size == 0:
        # What SQLite itself leaves after creating a file, so not refused; but a log that
        # held events and was truncated looks the same.
        _log.warning(
            "the event log %s is an empty file: starting a new log in it (if it held events, "
            "they are gone: restore it from a backup)",
            path,
            extra={"event_log": str(path)},
        )
    conn = _connect(path)
    try:
        _check_integrity(conn, path)
        conn.executescript(_SCHEMA)
        _add_registry_columns(conn)
        _add_inbox_columns(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class _WriterLock:
    """The OS lock that makes one open log the file's only writer, held until close.

    An flock belongs to one open file, so a second open is refused whether it comes from
    another process or this one, and the kernel releases it when the process dies. The
    lock file holds the holder's pid, which the refusal names.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, db: Path) -> _WriterLock:
        """Locks `<db>.lock`; EventLogUnavailable when another open log holds it."""
        fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise EventLogUnavailable(
                f"the event log {db} is in use by another process{by}: one process at a time "
                "writes a SQLite log (replicas share a NATS JetStream log instead)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        """Closes the lock file, which releases the lock (the file stays, for the next)."""
        os.close(self._fd)


def _probe_files(db: Path) -> tuple[Path, Path]:
    probe = db.with_name(db.name + ".probe")
    return probe, probe.with_name(probe.name + ".new")


def _probe_space(db: Path) -> None:
    """Takes a fresh page of disk, as a growing log does (SQLite's WAL reuses its own
    blocks, so writes to it can succeed on a full disk): the probe file's new copy is
    written and synced before it replaces the old one, whose block only then goes back."""
    probe, fresh = _probe_files(db)
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {time.time()}\n".encode().ljust(4096))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(fresh, probe)


@dataclass(frozen=True, slots=True)
class SqliteOptions:
    """What opening a SQLite event log takes.

    Attributes:
        path: the database file (created with its folder when missing).
        retention: how long events and dedup keys are kept (swept by the log).
        inbox_limit: most webhooks waiting for verification (`InboxFull` past it).
        tail_bytes: memory the newest events may take, shared by every stream.
        max_batch: most writes one group commit carries.
    """

    path: Path
    retention: Retention = field(default_factory=Retention)
    inbox_limit: int = DEFAULT_INBOX_LIMIT
    tail_bytes: int = DEFAULT_TAIL_BYTES
    max_batch: int = 1024


class SqliteEventLog:
    """An `EventLog` in one SQLite file. Create it with `SqliteEventLog.open`."""

    def __init__(
        self,
        options: SqliteOptions,
        lock: _WriterLock,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        lookup: sqlite3.Connection,
        *,
        report_failure: ReportFailure,
    ) -> None:
        self.path = options.path
        self._lock = lock
        self._writer_conn = writer
        self._reader_conn = reader
        self._lookup_conn = lookup
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="eventlog-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="eventlog-read")
        self._retention = options.retention
        self._max_batch = options.max_batch
        self._pending: asyncio.Queue[_PendingWrite[Any]] = asyncio.Queue()
        self._inbox_limit = options.inbox_limit
        self._waiting = _PendingIndex()
        self._inbox_latest = Watermark()  # the newest inbox sequence committed
        self._write_lock = asyncio.Lock()
        self._pruned_through = 0
        self._registry_complete = False
        self._tail = Tail(options.tail_bytes)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._report_failure = report_failure
        self._incarnation = UNTAGGED  # until `open` reads it
        self._mark: sqlite_incarnation.HighWaterMark | None = None
        # Transactions the writer committed for appends, inbox writes and settles: with
        # group commit, far fewer than the writes they carried.
        self.commits = 0

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
            lock = await asyncio.to_thread(_WriterLock.take, path)
        except OSError as error:
            raise EventLogUnavailable(f"cannot create the event log {path}: {error}") from error
        try:
            writer = await asyncio.to_thread(_open_writer, path)
            reader = await asyncio.to_thread(_connect, path)
            # Short: this one runs on the event loop, which must not wait long for a lock.
            lookup = _connect(path, check_same_thread=True, busy_ms=100)
        except sqlite3.Error as error:
            lock.release()
            raise EventLogUnavailable(f"cannot open the event log {path}: {error}") from error
        except BaseException:
            lock.release()
            raise
        log = cls(options, lock, writer, reader, lookup, report_failure=report_failure)
        latest, log._pruned_through = await log._on_writer(log._load_positions)
        log._incarnation = await log._on_writer(log._establish_incarnation)
        log._mark = sqlite_incarnation.HighWaterMark(path, log._incarnation.tag)
        log._mark.advance(latest)
        log._tail.start_at(latest)
        pending, log._inbox_latest.value = await log._on_writer(log._load_inbox_position)
        log._waiting = _PendingIndex(pending)
        log._registry_complete = await log._on_writer(log._load_registry_complete)
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
        return await self._write(lambda now: self._stage_records(records, now), len(records))

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

    async def known_accounts(self) -> dict[str, KnownAccount]:
        """Every account's last recorded state."""
        rows = await self._on_reader(
            lambda: self._reader_conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts").fetchall()  # noqa: S608 - constant column list
        )
        return {row[0]: _known(row) for row in rows}

    async def registry(self, query: RegistryQuery) -> RegistryPage:
        """Registry entries the query admits, read by one statement at the cursor this
        log has published (entries set by events committed later are left out). Reads
        by account id, or of one customer's accounts, walk an index for as many rows as
        they return: cheaper on the event loop than a hop to the reader thread; any other
        may scan, so it runs there."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        as_of = self._tail.latest if query.as_of is None else query.as_of
        try:
            if len(query.account_ids) == 1 and query.limit:  # GetAccount: one key
                (account_id,) = query.account_ids
                row = self._lookup_conn.execute(_ONE_REGISTERED, (account_id,)).fetchone()
                entry = None if row is None else _registered(row)
                found = [entry] if entry is not None and query.admits(entry, as_of) else []
                return RegistryPage(found, as_of, self._registry_complete)
            if query.account_ids or query.limit == 0 or _one_owner_only(query):
                return self._select_registry(self._lookup_conn, query, as_of)
        except sqlite3.Error as error:
            raise EventLogUnavailable(f"the event log at {self.path} failed: {error}") from error
        return await self._on_reader(self._select_registry, self._reader_conn, query, as_of)

    async def mark_registry_complete(self) -> None:
        """Records that a full listing of StackOne has been folded into the registry."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        if not self._registry_complete:
            await self._write(self._stage_registry_complete, 1)
            self._registry_complete = True  # it never turns false again

    def _select_registry(
        self, conn: sqlite3.Connection, query: RegistryQuery, as_of: int
    ) -> RegistryPage:
        where = ["deleted = 0", "cursor <= ?", "account_id > ?"]
        values: list[object] = [as_of, query.after_account]
        for column, allowed in (
            ("origin_owner_id", query.origin_owner_ids),
            ("provider", query.providers),
            ("account_id", query.account_ids),
            ("status", query.statuses),
        ):
            if allowed:
                where.append(f"{column} IN ({', '.join('?' * len(allowed))})")
                values.extend(sorted(allowed))
        rows = conn.execute(
            f"SELECT {_REGISTERED} FROM accounts WHERE {' AND '.join(where)}"  # noqa: S608 - columns and placeholders only
            " ORDER BY account_id LIMIT ?",
            (*values, query.limit + 1),
        ).fetchall()
        entries = [_registered(row) for row in rows[: query.limit]]
        return RegistryPage(entries, as_of, self._registry_complete, len(rows) > query.limit)

    def _stage_registry_complete(self, now: float) -> _Staged[None]:
        self._writer_conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, 1)", (_REGISTRY_COMPLETE,)
        )
        return _Staged(None)

    # --- Inbox --------------------------------------------------------------------

    async def accept(self, entry: InboxEntry, alone: EventRecord | None = None) -> Accepted:
        """Durably adds a webhook to the inbox unless its id is pending or recorded; with
        `alone`, records that event instead when no entry of the account is pending."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        return await self._write(lambda now: self._stage_accept(entry, alone, now), 1)

    async def pending(self, after: int, limit: int) -> list[InboxEntry]:
        """Up to `limit` inbox entries after sequence `after`, oldest first."""
        rows = await self._on_reader(
            lambda: self._reader_conn.execute(
                f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608 - constant column list
                (after, limit),
            ).fetchall()
        )
        return [_inbox_entry(*row) for row in rows]

    async def unsettled(self, entries: Sequence[InboxEntry]) -> list[InboxEntry]:
        """All of them: settling records and clears in one transaction, so an entry still
        in the inbox was never recorded."""
        return list(entries)

    async def settle(
        self, entries: Sequence[InboxEntry], records: Sequence[EventRecord]
    ) -> Settlement:
        """Appends `records` and clears `entries` in one transaction (one writer: nothing
        else records them meanwhile)."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        outcomes = await self._write(
            lambda now: self._stage_settle(records, entries, now), max(1, len(records))
        )
        return Settlement(outcomes)

    async def wait_for_inbox(self, after: int, timeout: float) -> None:
        """Returns once an entry past `after` was accepted, or after `timeout` seconds."""
        await self._inbox_latest.wait_past(after, timeout)

    async def inbox_stats(self) -> InboxStats:
        """Entries waiting and the arrival time of the oldest (the first by sequence)."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        row = self._lookup_conn.execute(
            "SELECT received_at FROM inbox ORDER BY seq LIMIT 1"
        ).fetchone()
        return InboxStats(len(self._waiting), None if row is None else float(row[0]))

    async def check_writable(self) -> None:
        """Writes and syncs as an append would; raises `EventLogUnavailable` if it fails."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        await self._on_writer(self._probe_write)

    async def close(self) -> None:
        """Commits what is pending, stops background work and closes the file."""
        if self._closed:
            return
        self._closed = True
        await self._pending.join()
        await cancel_all(self._tasks)
        await self._on_writer(self._writer_conn.close)
        await self._on_reader(self._reader_conn.close)
        self._lookup_conn.close()
        if self._mark is not None:
            self._mark.close()
        self._writer.shutdown()
        self._reader.shutdown()
        for probe in _probe_files(self.path):
            probe.unlink(missing_ok=True)
        self._lock.release()
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
        interval = self._retention.sweep_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.enforce_retention()
            except Exception:  # whatever it was, the next sweep tries again
                _log.exception("event log retention sweep failed; retrying in %gs", interval)
                self._report_failure("event_log_retention")

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
            # A deleted account's tombstone is kept as long as its webhooks' ids.
            conn.execute(
                "DELETE FROM accounts WHERE deleted = 1 AND recorded_at > 0 AND recorded_at < ?",
                (now - self._retention.dedup_window,),
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

    async def _write(self, stage: Callable[[float], _Staged[_T]], weight: int) -> _T:
        done: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(_PendingWrite(stage, weight, done))
        return await done

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._pending.get()]
            weight = batch[0].weight
            while weight < self._max_batch and not self._pending.empty():
                batch.append(self._pending.get_nowait())
                weight += batch[-1].weight
            staged: list[_Staged[Any] | BaseException] = []
            try:
                async with self._write_lock:
                    staged = self._stage_batch(batch)
                    await self._run(self._writer, self._commit)
            except Exception as error:  # the batch fails; the writer lives on for the next
                storage = isinstance(error, EventLogUnavailable | OSError)
                _log.error("event log write failed: %s", error, exc_info=not storage)
                self._report_failure("event_log_writer")
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(
                            EventLogUnavailable(f"the event log could not write: {error}")
                        )
            else:
                self.commits += 1
                self._committed(batch, staged)
            finally:
                self._waiting.end_transaction()
            for _ in batch:
                self._pending.task_done()

    def _stage_batch(
        self, batch: Sequence[_PendingWrite[Any]]
    ) -> list[_Staged[Any] | BaseException]:
        """Runs every write's statements in one new transaction, left open for `_commit`.

        A write that refuses (a full inbox) fails alone; a storage error fails them all.
        """
        conn = self._writer_conn
        now = time.time()
        staged: list[_Staged[Any] | BaseException] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in batch:
                try:
                    staged.append(pending.stage(now))
                except InboxFull as refused:
                    staged.append(refused)
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise EventLogUnavailable(f"{self.path}: {error}") from error
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return staged

    def _committed(
        self, batch: Sequence[_PendingWrite[Any]], staged: Sequence[_Staged[Any] | BaseException]
    ) -> None:
        stored = [
            event for outcome in staged if isinstance(outcome, _Staged) for event in outcome.stored
        ]
        if stored and self._mark is not None:  # before any subscriber can see the cursors
            self._mark.advance(stored[-1].cursor)
        self._tail.publish(stored)
        inbox_latest = 0
        for pending, outcome in zip(batch, staged, strict=True):
            if isinstance(outcome, BaseException):
                if not pending.done.done():
                    pending.done.set_exception(outcome)
                continue
            self._waiting.committed(outcome.pending_added, outcome.pending_removed)
            inbox_latest = max(inbox_latest, outcome.inbox_latest)
            if not pending.done.done():
                pending.done.set_result(outcome.result)
        self._inbox_latest.advance(inbox_latest)  # wakes the verifier

    def _stage_accept(
        self, entry: InboxEntry, alone: EventRecord | None, now: float
    ) -> _Staged[Accepted]:
        event_id = entry.event_id
        if self._waiting.holds(event_id):
            return _Staged(Accepted.DUPLICATE)  # a redelivery of a webhook still waiting
        conn = self._writer_conn
        if conn.execute("SELECT 1 FROM dedup WHERE event_id = ?", (event_id,)).fetchone():
            return _Staged(Accepted.REPEATED)  # recorded before
        account_id = entry.account_id
        if alone is not None and not self._waiting.has_waiting(account_id):
            # Nothing of the account waits for the verifier, so recording it now keeps
            # the account's order; the same transaction the inbox row would have taken.
            return _Staged(Accepted.RECORDED, self._stage_records([alone], now).stored)
        if self._waiting.is_full(self._inbox_limit):
            raise InboxFull(
                f"{len(self._waiting)} webhooks are waiting for verification (the limit)"
            )
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
        self._waiting.stage(entry)
        return _Staged(
            Accepted.QUEUED,
            inbox_latest=int(inserted.lastrowid or 0),
            pending_added=(entry,),
        )

    def _stage_settle(
        self, records: Sequence[EventRecord], entries: Sequence[InboxEntry], now: float
    ) -> _Staged[list[AppendOutcome]]:
        staged = self._stage_records(records, now)
        self._writer_conn.executemany(
            "DELETE FROM inbox WHERE seq = ?", [(entry.seq,) for entry in entries]
        )
        staged.pending_removed = tuple(entries)
        return staged

    def _stage_records(
        self, records: Sequence[EventRecord], now: float
    ) -> _Staged[list[AppendOutcome]]:
        """The statements that append `records` (inside the open transaction)."""
        conn = self._writer_conn
        outcomes: list[AppendOutcome] = []
        stored: list[StoredEvent] = []
        for record in records:
            seen = conn.execute(
                "SELECT cursor FROM dedup WHERE event_id = ?", (record.event_id,)
            ).fetchone()
            if seen is not None:
                outcomes.append(AppendOutcome(record.event_id, int(seen[0]), duplicate=True))
                continue
            previous = self._registered_in_transaction(record.account_id)
            if already_known(record, None if previous is None else previous.known):
                # Remembered too, so a redelivery is dropped without another check.
                self._remember_ids(record, 0, now)
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
            self._remember_ids(record, cursor, now)
            known = KnownAccount.recorded(record)
            event = record.stored(cursor, now)
            entry = registered(event)
            conn.execute(
                f"INSERT OR REPLACE INTO accounts (source, updated_at, {_REGISTERED})"  # noqa: S608 - constant column list
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    known.source, known.updated_at, entry.account_id, entry.cursor,
                    entry.deleted, entry.account, entry.provider, entry.origin_owner_id,
                    known.status, entry.recorded_at,
                ),
            )  # fmt: skip
            outcomes.append(AppendOutcome(record.event_id, cursor, duplicate=False))
            stored.append(event)
        return _Staged(outcomes, stored)

    def _remember_ids(self, record: EventRecord, cursor: int, now: float) -> None:
        self._writer_conn.executemany(
            "INSERT OR IGNORE INTO dedup (event_id, cursor, recorded_at) VALUES (?, ?, ?)",
            [(event_id, cursor, now) for event_id in record.ids],
        )

    def _commit(self) -> None:
        try:
            self._writer_conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self._writer_conn.execute("ROLLBACK")
            raise

    def _registered_in_transaction(self, account_id: str) -> _Previous | None:
        row = self._writer_conn.execute(
            f"SELECT {_REGISTERED}, updated_at, source FROM accounts WHERE account_id = ?",  # noqa: S608 - constant column list
            (account_id,),
        ).fetchone()
        if row is None:
            return None
        entry = _registered(row[:8])
        return _Previous(entry if entry.account else None, KnownAccount(
            entry.account_id, entry.status, row[8], entry.deleted, row[9]
        ))  # fmt: skip

    def _load_registry_complete(self) -> bool:
        row = self._writer_conn.execute(
            "SELECT value FROM meta WHERE key = ?", (_REGISTRY_COMPLETE,)
        ).fetchone()
        return bool(row and row[0])

    def _load_positions(self) -> tuple[int, int]:
        conn = self._writer_conn
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        pruned = conn.execute("SELECT value FROM meta WHERE key = 'pruned_through'").fetchone()
        return (int(row[0]) if row else 0, int(pruned[0]) if pruned else 0)

    def _establish_incarnation(self) -> Incarnation:
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            incarnation = sqlite_incarnation.establish(conn, self.path)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return incarnation

    def _load_inbox_position(self) -> tuple[list[tuple[str, str]], int]:
        """The (event id, account id) of every inbox entry, and the newest sequence."""
        conn = self._writer_conn
        pending = conn.execute("SELECT event_id, account_id FROM inbox").fetchall()
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'inbox'").fetchone()
        return pending, int(row[0]) if row else 0

    def _probe_write(self) -> None:
        """Succeeds only if an append could now: fresh space from the filesystem, a page
        from SQLite (taken, then given back, so the file does not grow), and a
        transaction committed and fsync'd (synchronous=FULL) through the WAL."""
        try:
            _probe_space(self.path)
        except OSError as error:
            raise EventLogUnavailable(f"cannot write next to {self.path}: {error}") from error
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("SAVEPOINT room")
            conn.execute(
                "INSERT INTO probe (id, room) SELECT 0, zeroblob(page_size) FROM pragma_page_size"
            )
            conn.execute("ROLLBACK TO room")
            conn.execute("RELEASE room")
            conn.execute(
                "INSERT OR REPLACE INTO probe (id, checked_at) VALUES (1, ?)", (time.time(),)
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                conn.execute("ROLLBACK")
            raise

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


@dataclass(frozen=True)
class Backup:
    """What a backup holds: its events' last cursor (as the log's subscribers know it:
    they resume in the copy up to it) and the webhooks still waiting."""

    path: Path
    latest_cursor: str
    waiting_webhooks: int


def backup(source: Path, target: Path) -> Backup:
    """Copies the log at `source`, open or not, to `target` as of one moment.

    SQLite's online backup in one step: a single read transaction, so the copy is
    consistent, and in WAL mode a reader never blocks the log's writer. The copy is written
    beside `target`, synced, then renamed over it, so `target` is whole or absent. Blocking:
    call it from a thread or a command.
    """
    if not source.is_file():
        raise EventLogUnavailable(f"there is no event log at {source}")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        read_only = f"{source.resolve().as_uri()}?mode=ro"
        with (
            contextlib.closing(sqlite3.connect(read_only, uri=True)) as reader,
            contextlib.closing(sqlite3.connect(partial)) as copy,
        ):
            reader.backup(copy)
            copied = sqlite_incarnation.load(copy) or UNTAGGED
            latest = sqlite_incarnation.sequence_of(copy)
            # Put back, the copy is a new incarnation: the log's cursors past `latest` are
            # then refused, not resumed after in events the copy numbers anew.
            sqlite_incarnation.fork_copy(copy)
            copy.commit()
            waiting = copy.execute("SELECT count(*) FROM inbox").fetchone()[0]
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        partial.replace(target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except sqlite3.Error as error:
        partial.unlink(missing_ok=True)
        raise EventLogUnavailable(f"cannot back up the event log at {source}: {error}") from error
    return Backup(target, copied.public(latest), int(waiting))


def path_of(url: ParseResult) -> Path:
    """The file of a `sqlite:///` URL (three slashes: a relative path, four: absolute)."""
    path = url.path
    return Path(path[1:]) if path.startswith("/") else Path(path)


BACKEND = Backend(
    example="sqlite:///path.db",
    accepts=lambda url: bool(url.path.lstrip("/")),
)
