"""The connections to a log's file, the threads they run on, and a trace of what they run."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, TypeVar

from service.events.model import EventLogUnavailable

_T = TypeVar("_T")


def connect(
    path: Path, *, check_same_thread: bool = False, busy_ms: int = 5000
) -> sqlite3.Connection:
    """A connection in WAL mode whose commits are on disk when they return."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (fsync'd WAL) before append() returns and the
    # gateway acknowledges the webhook.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn


async def run_in(
    thread: ThreadPoolExecutor, path: Path, fn: Callable[..., _T], *args: object
) -> _T:
    """Runs `fn` on `thread` (a connection's own), a storage failure as `EventLogUnavailable`."""
    try:
        return await asyncio.get_running_loop().run_in_executor(thread, fn, *args)
    except RuntimeError as error:  # the executor is shut down: the log was closed
        raise EventLogUnavailable("the event log is closed") from error
    except sqlite3.Error as error:
        raise EventLogUnavailable(f"the event log at {path} failed: {error}") from error


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction outside the group commit, rolled back if its body fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            conn.execute("ROLLBACK")
        raise


class Reader:
    """A connection that reads, on a thread of its own."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="eventlog-read")

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        """`fn(conn, *args)` on the reading thread."""
        return await run_in(self._thread, self._path, fn, self.conn, *args)

    async def close(self) -> None:
        """Closes the connection and stops its thread."""
        await run_in(self._thread, self._path, self.conn.close)
        self._thread.shutdown()


class Statement(NamedTuple):
    """One SQL statement a log ran: which of its connections ran it, on which thread."""

    sql: str
    connection: str
    thread: int


@contextmanager
def traced(connections: Mapping[str, sqlite3.Connection]) -> Iterator[list[Statement]]:
    """Every statement the connections (by name) run from here, with the thread that ran
    it (SQLite's own trace hook, called on the thread executing the statement)."""
    statements: list[Statement] = []

    def tracer(name: str) -> Callable[[str], None]:
        return lambda sql: statements.append(Statement(sql, name, threading.get_ident()))

    for name, conn in connections.items():
        conn.set_trace_callback(tracer(name))
    try:
        yield statements
    finally:
        for conn in connections.values():
            conn.set_trace_callback(None)
