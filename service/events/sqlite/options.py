"""What opening a SQLite event log takes, and the URL that names one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import ParseResult

from service.events.log import Backend
from service.events.model import Retention
from service.events.tail import DEFAULT_TAIL_BYTES

DEFAULT_INBOX_LIMIT = 100_000


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


def path_of(url: ParseResult) -> Path:
    """The file of a `sqlite:///` URL (three slashes: a relative path, four: absolute)."""
    path = url.path
    return Path(path[1:]) if path.startswith("/") else Path(path)


BACKEND = Backend(
    example="sqlite:///path.db",
    accepts=lambda url: bool(url.path.lstrip("/")),
)
