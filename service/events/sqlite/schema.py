"""The log's tables, how a file written by an earlier release is brought to them, and the
check that a file is an intact database before the log writes to it."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from service.events.model import EventLogUnavailable
from service.events.sqlite.connections import connect

_log = logging.getLogger(__name__)

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
-- The first answer of each retryable call by its request id (see `requests`); `answer`
-- is NULL while the call that claimed it is in flight.
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    answer BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_claimed_at ON requests (claimed_at);
-- Written by the readiness probe, so that "ready" means a write just succeeded.
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, checked_at REAL, room BLOB);
"""
_REGISTRY_COLUMNS = {
    "cursor": "INTEGER NOT NULL DEFAULT 0",
    "provider": "TEXT NOT NULL DEFAULT ''",
    "origin_owner_id": "TEXT NOT NULL DEFAULT ''",
    "account": "BLOB NOT NULL DEFAULT x''",
    "recorded_at": "REAL NOT NULL DEFAULT 0",
}
# Columns the inbox gained after its first release; a log written before gains them at open
# (`webhook`, the parsed webhook as JSON, is '' in the entries written before it).
_LATER_INBOX_COLUMNS = {
    "traceparent": "TEXT NOT NULL DEFAULT ''",
    "webhook": "TEXT NOT NULL DEFAULT ''",
}
# Start-up checks the file's structure for at most this long (about 250 MB read cold).
INTEGRITY_CHECK_SECONDS = 5.0


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


def open_writer(path: Path) -> sqlite3.Connection:
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
    conn = connect(path)
    try:
        _check_integrity(conn, path)
        conn.executescript(_SCHEMA)
        _add_registry_columns(conn)
        _add_inbox_columns(conn)
    except BaseException:
        conn.close()
        raise
    return conn
