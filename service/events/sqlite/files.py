"""The files beside a log's database: the lock that makes one open log its only writer, and
the probe that shows the disk takes a write (readiness)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path

from service.events.model import EventLogUnavailable
from service.events.sqlite.connections import immediate_transaction


class WriterLock:
    """The OS lock that makes one open log the file's only writer, held until close.

    An flock belongs to one open file, so a second open is refused whether it comes from
    another process or this one, and the kernel releases it when the process dies. The
    lock file holds the holder's pid, which the refusal names.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, db: Path) -> WriterLock:
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


def probe_files(db: Path) -> tuple[Path, Path]:
    """The probe file beside `db`, and its new copy while written."""
    probe = db.with_name(db.name + ".probe")
    return probe, probe.with_name(probe.name + ".new")


def _probe_space(db: Path) -> None:
    """Takes a fresh page of disk, as a growing log does (SQLite's WAL reuses its own
    blocks, so writes to it can succeed on a full disk): the probe file's new copy is
    written and synced before it replaces the old one, whose block only then goes back."""
    probe, fresh = probe_files(db)
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {time.time()}\n".encode().ljust(4096))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(fresh, probe)


def probe_write(conn: sqlite3.Connection, path: Path) -> None:
    """Succeeds only if an append could now: fresh space from the filesystem, a page
    from SQLite (taken, then given back, so the file does not grow), and a
    transaction committed and fsync'd (synchronous=FULL) through the WAL."""
    try:
        _probe_space(path)
    except OSError as error:
        raise EventLogUnavailable(f"cannot write next to {path}: {error}") from error
    with immediate_transaction(conn):
        conn.execute("SAVEPOINT room")
        conn.execute(
            "INSERT INTO probe (id, room) SELECT 0, zeroblob(page_size) FROM pragma_page_size"
        )
        conn.execute("ROLLBACK TO room")
        conn.execute("RELEASE room")
        conn.execute("INSERT OR REPLACE INTO probe (id, checked_at) VALUES (1, ?)", (time.time(),))
