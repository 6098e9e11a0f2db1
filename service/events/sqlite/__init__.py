"""The embedded event log: one SQLite file, its writes group-committed.

One file per concern: `schema` (the tables and their migrations), `writer` (the one
writing connection and its group commit, into whose transaction `events`, `inbox` and
`registry` stage their statements), `files` (the writer's lock, the readiness probe),
`incarnation`, `backup`, and `log`, the `SqliteEventLog` that puts them together.
"""

from service.events.sqlite.backup import Backup, backup
from service.events.sqlite.connections import Statement
from service.events.sqlite.log import SqliteEventLog
from service.events.sqlite.options import BACKEND, SqliteOptions, path_of

__all__ = [
    "BACKEND",
    "Backup",
    "SqliteEventLog",
    "SqliteOptions",
    "Statement",
    "backup",
    "path_of",
]
