"""Which incarnation a SQLite event log is, and how a replaced one is recognised.

The incarnation lives in the database (`meta`), so it travels with every copy; a copy
put back in place of the log would then carry the tag of the log it replaced. Two things
tell such a copy apart:

- `backup` gives its copy a new incarnation at once (`fork_copy`): cursors of the log up
  to the copy's last event resume in it, later ones get `OUT_OF_RANGE`.
- Beside the database, `<db>.incarnation` (the high-water mark) holds the tag served at
  this path and the highest cursor it has handed out, written before any subscriber can
  see a cursor. At open, a database with that tag whose sequence is below the mark is a
  copy restored by hand (`cp`): it becomes a new incarnation the same way. A database with
  another tag (a new log, another log's file) keeps its own, but takes no bare cursor of
  the previous release, which would name the replaced log's events.

Not detected: a copy restored by hand together with the mark file, or after the mark was
deleted; a mark lost to a power cut (it is not fsync'd) before the copy is put back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

from service.events.cursors import Incarnation, new_tag

_log = logging.getLogger(__name__)
_KEYS = ("incarnation", "parent_incarnation", "parent_through", "bare_through")
_MARK_BYTES = 48  # one fixed-size record, rewritten in place


def load(conn: sqlite3.Connection) -> Incarnation | None:
    """The incarnation stored in the database; None for a log written before there was one."""
    rows = dict(
        conn.execute(
            f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(_KEYS))})",  # noqa: S608 - placeholders only
            _KEYS,
        ).fetchall()
    )
    if "incarnation" not in rows:
        return None
    return Incarnation(
        int(rows["incarnation"]),
        parent=int(rows.get("parent_incarnation", 0)),
        parent_through=int(rows.get("parent_through", -1)),
        bare_through=int(rows.get("bare_through", -1)),
    )


def store(conn: sqlite3.Connection, incarnation: Incarnation) -> None:
    """Writes `incarnation` into the database's `meta` table."""
    values = (
        incarnation.tag,
        incarnation.parent,
        incarnation.parent_through,
        incarnation.bare_through,
    )
    conn.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", zip(_KEYS, values, strict=True)
    )


def sequence_of(conn: sqlite3.Connection) -> int:
    """The highest cursor the database ever issued (pruned events included)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row else 0


def fork_copy(conn: sqlite3.Connection) -> Incarnation:
    """Makes the copy open on `conn` (a backup) an incarnation of its own."""
    latest = sequence_of(conn)
    source = load(conn)
    copy = (
        Incarnation(new_tag(), bare_through=latest)  # its source never had a tag
        if source is None
        else source.forked(latest)
    )
    store(conn, copy)
    return copy


@dataclass(frozen=True, slots=True)
class _Mark:
    tag: int
    high: int


def mark_path(db: Path) -> Path:
    """The high-water mark file of the log at `db`."""
    return db.with_name(db.name + ".incarnation")


def _read_mark(db: Path) -> _Mark | None:
    try:
        tag, high = mark_path(db).read_text().split()
        return _Mark(int(tag), int(high))
    except (OSError, ValueError):  # absent, or torn by a crash: no evidence either way
        return None


def establish(conn: sqlite3.Connection, db: Path) -> Incarnation:
    """The incarnation of the database at `db` (open on `conn`), stored; made new when the
    high-water mark shows the database is a copy put back in place of the log."""
    latest = sequence_of(conn)
    current = load(conn)
    mark = _read_mark(db)
    if current is None:
        current = Incarnation(new_tag(() if mark is None else (mark.tag,)))
        if mark is not None:
            # A new log where another was served: bare cursors named that one's events.
            current = replace(current, bare_through=-1)
    elif mark is not None and mark.tag == current.tag and mark.high > latest:
        _log.warning(
            "the event log %s holds cursors through %d but handed out cursors through %d: "
            "it is a copy put back in place (a restored backup); it starts a new incarnation, "
            "and subscribers past cursor %d get OUT_OF_RANGE and resync",
            db,
            latest,
            mark.high,
            latest,
            extra={"event_log": str(db)},
        )
        current = current.forked(latest)
    elif mark is not None and mark.tag not in (current.tag, current.parent):
        current = replace(current, bare_through=-1)  # another log took this one's place
    store(conn, current)
    return current


class HighWaterMark:
    """The mark file of one open log: its tag and the highest cursor handed out."""

    def __init__(self, db: Path, tag: int) -> None:
        self._tag = tag
        self._high = -1
        self._fd = os.open(mark_path(db), os.O_RDWR | os.O_CREAT, 0o644)
        self._failed = False

    def advance(self, high: int) -> None:
        """Records `high` (a page-cache write of one record, no fsync: a few microseconds)."""
        if high <= self._high:
            return
        self._high = high
        record = f"{self._tag} {high}".encode().ljust(_MARK_BYTES)
        try:
            os.pwrite(self._fd, record, 0)
        except OSError as error:
            if not self._failed:  # once: the log works on, restores go unnoticed meanwhile
                _log.warning("cannot write the event log's high-water mark: %s", error)
            self._failed = True

    def close(self) -> None:
        """Closes the file (it stays, for the next open)."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
