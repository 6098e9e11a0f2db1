"""The one writing connection and its group commit.

Writes that arrive while a commit is in flight are staged together in the next
transaction on the event loop's thread (in-memory B-tree work, cheaper than handing each
statement to another thread and back), and only the COMMIT, which waits for the fsync,
runs on the writer thread: durability costs one fsync per batch, not per write, and the
loop never waits for the disk. Appends, the inbox and the registry all stage into this
one transaction, so an event, the inbox entries it settles and the registry entry it sets
commit together. A lock keeps every use of the connection (a batch, retention, the
writability probe) one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from service.events.log import ReportFailure
from service.events.model import EventLogUnavailable, InboxFull, StoredEvent
from service.events.sqlite.connections import run_in

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(slots=True)
class Staged(Generic[_T]):
    """What one write did inside the open transaction: its result, the events it stored,
    and what to apply in memory once the transaction commits."""

    result: _T
    stored: list[StoredEvent] = field(default_factory=list)
    committed: Callable[[], None] | None = None


# A write's statements: run on the writing connection, inside the open transaction, at `now`.
Stage = Callable[[sqlite3.Connection, float], Staged[_T]]


@dataclass(slots=True)
class _PendingWrite(Generic[_T]):
    """A write waiting for the next group commit."""

    stage: Stage[_T]
    weight: int
    done: asyncio.Future[_T]


class Writer:
    """The writing connection, its thread, and the queue of writes for the next commit.

    `published` hears of the events each commit stored (before any write's caller does);
    `ended` is called after each transaction, committed or not.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        max_batch: int,
        report_failure: ReportFailure,
        published: Callable[[list[StoredEvent]], None],
        ended: Callable[[], None],
    ) -> None:
        self.conn = conn
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="eventlog-write")
        self._lock = asyncio.Lock()
        self._pending: asyncio.Queue[_PendingWrite[Any]] = asyncio.Queue()
        self._max_batch = max_batch
        self._report_failure = report_failure
        self._published = published
        self._ended = ended
        # Transactions committed for appends, inbox writes and settles: with group commit,
        # far fewer than the writes they carried.
        self.commits = 0

    async def write(self, stage: Stage[_T], weight: int) -> _T:
        """Runs `stage` in the next group commit; returns its result once committed."""
        done: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(_PendingWrite(stage, weight, done))
        return await done

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        """`fn(conn, *args)` on the writer thread, between transactions (it may open one)."""
        async with self._lock:
            return await run_in(self._thread, self._path, fn, self.conn, *args)

    async def commit_loop(self) -> None:
        """Commits the writes queued, a batch at a time, until cancelled."""
        while True:
            batch = [await self._pending.get()]
            weight = batch[0].weight
            while weight < self._max_batch and not self._pending.empty():
                batch.append(self._pending.get_nowait())
                weight += batch[-1].weight
            staged: list[Staged[Any] | BaseException] = []
            try:
                async with self._lock:
                    staged = self._stage_batch(batch)
                    await run_in(self._thread, self._path, self._commit)
            except Exception as error:  # the batch fails; the writer lives on for the next
                self._failed(batch, error)
            else:
                self.commits += 1
                self._committed(batch, staged)
            finally:
                self._ended()
            for _ in batch:
                self._pending.task_done()

    async def drain(self) -> None:
        """Returns once every write queued so far is committed (or failed)."""
        await self._pending.join()

    async def close(self) -> None:
        """Closes the connection and stops the thread (after `drain`, with the loop stopped)."""
        await self.run(sqlite3.Connection.close)
        self._thread.shutdown()

    def _stage_batch(
        self, batch: Sequence[_PendingWrite[Any]]
    ) -> list[Staged[Any] | BaseException]:
        """Runs every write's statements in one new transaction, left open for `_commit`.

        A write that refuses (a full inbox) fails alone; a storage error fails them all.
        """
        conn = self.conn
        now = time.time()
        staged: list[Staged[Any] | BaseException] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in batch:
                try:
                    staged.append(pending.stage(conn, now))
                except InboxFull as refused:
                    staged.append(refused)
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise EventLogUnavailable(f"{self._path}: {error}") from error
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return staged

    def _commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self.conn.execute("ROLLBACK")
            raise

    def _committed(
        self, batch: Sequence[_PendingWrite[Any]], staged: Sequence[Staged[Any] | BaseException]
    ) -> None:
        self._published(
            [event for outcome in staged if isinstance(outcome, Staged) for event in outcome.stored]
        )
        for pending, outcome in zip(batch, staged, strict=True):
            if isinstance(outcome, BaseException):
                if not pending.done.done():
                    pending.done.set_exception(outcome)
                continue
            if outcome.committed is not None:
                outcome.committed()
            if not pending.done.done():
                pending.done.set_result(outcome.result)

    def _failed(self, batch: Sequence[_PendingWrite[Any]], error: Exception) -> None:
        storage = isinstance(error, EventLogUnavailable | OSError)
        _log.error("event log write failed: %s", error, exc_info=not storage)
        self._report_failure("event_log_writer")
        for pending in batch:
            if not pending.done.done():
                pending.done.set_exception(
                    EventLogUnavailable(f"the event log could not write: {error}")
                )
