"""The embedded event log: one SQLite file, group-committed (see `service.events.sqlite.log`)."""

from service.events.sqlite.log import (
    BACKEND,
    Backup,
    SqliteEventLog,
    SqliteOptions,
    backup,
    path_of,
)

__all__ = ["BACKEND", "Backup", "SqliteEventLog", "SqliteOptions", "backup", "path_of"]
