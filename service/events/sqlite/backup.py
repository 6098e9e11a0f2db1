"""A SQLite log's backup: a consistent copy of the file, open or not, as of one moment."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from service.events.cursors import UNTAGGED
from service.events.model import EventLogUnavailable
from service.events.sqlite import incarnation


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
            copied = incarnation.load(copy) or UNTAGGED
            latest = incarnation.sequence_of(copy)
            # Put back, the copy is a new incarnation: the log's cursors past `latest` are
            # then refused, not resumed after in events the copy numbers anew.
            incarnation.fork_copy(copy)
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
