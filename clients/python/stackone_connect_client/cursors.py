"""Where a subscriber keeps the cursor it has processed up to, so a restart continues."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class CursorStore(Protocol):
    """Keeps one subscriber's cursor.

    `watch` loads it once, before the first stream, and saves the cursor of each item once
    the application has asked for the next one (it is done with the item): after a crash the
    subscriber resumes at the first item it had not finished, delivered at least once.
    """

    async def load(self) -> str | None:
        """The saved cursor, or None when nothing was saved yet."""
        ...

    async def save(self, cursor: str) -> None:
        """Keeps `cursor`, replacing the one saved before."""
        ...


class MemoryCursorStore:
    """A cursor kept in memory: survives reconnects, not a restart of the process."""

    def __init__(self, cursor: str | None = None) -> None:
        self.cursor = cursor

    async def load(self) -> str | None:
        """The cursor saved last."""
        return self.cursor

    async def save(self, cursor: str) -> None:
        """Keeps `cursor`."""
        self.cursor = cursor


class FileCursorStore:
    """A cursor in a file, replaced atomically: a crash leaves the old cursor or the new
    one, never a torn write.

    Args:
        path: the file (its directory must exist).
        durable: fsync the file and its directory on every save, so that the cursor
            survives a power loss too (about a millisecond each on a disk); without it, a
            crash of the process still never loses a save.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable

    async def load(self) -> str | None:
        """The saved cursor, or None when the file does not exist (or is empty)."""
        try:
            return self.path.read_text().strip() or None
        except FileNotFoundError:
            return None

    async def save(self, cursor: str) -> None:
        """Writes `cursor` to a temporary file beside the store and renames it over it."""
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with partial.open("w") as file:
            file.write(cursor)
            if self.durable:
                file.flush()
                os.fsync(file.fileno())
        partial.replace(self.path)
        if self.durable:
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
