"""The registry's rows (`accounts`): each account as its last recorded event left it,
staged into the writer's transaction with that event, and read by query."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from service.events.model import EventLogUnavailable, KnownAccount, StoredEvent
from service.events.registry import RegisteredAccount, RegistryPage, RegistryQuery, registered
from service.events.sqlite.writer import Staged

_COMPLETE = "registry_complete"  # its key in `meta`
_KNOWN = "account_id, status, updated_at, deleted, source"
_REGISTERED = "account_id, cursor, deleted, account, provider, origin_owner_id, status, recorded_at"
_ONE_REGISTERED = f"SELECT {_REGISTERED} FROM accounts WHERE account_id = ?"  # noqa: S608 - constant column list


@dataclass(frozen=True, slots=True)
class Previous:
    """An account's row before an append: its registry entry (None for a row written
    before the registry) and what reconciliation compares."""

    entry: RegisteredAccount | None
    known: KnownAccount


def _registered(row: tuple[str, int, int, bytes, str, str, str, float]) -> RegisteredAccount:
    account_id, cursor, deleted, account, provider, owner, status, recorded_at = row
    return RegisteredAccount(
        account_id, int(cursor), bool(deleted), bytes(account), provider, owner, status,
        float(recorded_at),
    )  # fmt: skip


def previous(conn: sqlite3.Connection, account_id: str) -> Previous | None:
    """The account's row as the open transaction sees it (None: never recorded)."""
    row = conn.execute(
        f"SELECT {_REGISTERED}, updated_at, source FROM accounts WHERE account_id = ?",  # noqa: S608 - constant column list
        (account_id,),
    ).fetchone()
    if row is None:
        return None
    entry = _registered(row[:8])
    return Previous(entry if entry.account else None, KnownAccount(
        entry.account_id, entry.status, row[8], entry.deleted, row[9]
    ))  # fmt: skip


def stage_entry(conn: sqlite3.Connection, event: StoredEvent, known: KnownAccount) -> None:
    """Sets the account's row to what `event` (being appended) leaves it as."""
    entry = registered(event)
    conn.execute(
        f"INSERT OR REPLACE INTO accounts (source, updated_at, {_REGISTERED})"  # noqa: S608 - constant column list
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            known.source, known.updated_at, entry.account_id, entry.cursor,
            entry.deleted, entry.account, entry.provider, entry.origin_owner_id,
            known.status, entry.recorded_at,
        ),
    )  # fmt: skip


def stage_complete(conn: sqlite3.Connection, now: float) -> Staged[None]:
    """Records that a full listing of StackOne has been folded in (a write's stage)."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, 1)", (_COMPLETE,))
    return Staged(None)


def load_complete(conn: sqlite3.Connection) -> bool:
    """Whether a full listing was ever folded in."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_COMPLETE,)).fetchone()
    return bool(row and row[0])


def known_accounts(conn: sqlite3.Connection) -> dict[str, KnownAccount]:
    """Every account's last recorded state."""
    rows = conn.execute(f"SELECT {_KNOWN} FROM accounts").fetchall()  # noqa: S608 - constant column list
    return {row[0]: KnownAccount(row[0], row[1], row[2], bool(row[3]), row[4]) for row in rows}


def _one_owner_only(query: RegistryQuery) -> bool:
    """A read of one customer's accounts with no other filter: the owner index yields
    them in order, each row scanned is returned (but tombstones), so it stays small."""
    return len(query.origin_owner_ids) == 1 and not (query.providers or query.statuses)


class Reads:
    """The registry's queries, and whether it is complete (it never turns false again)."""

    def __init__(self, lookup: sqlite3.Connection, path: Path) -> None:
        self._lookup = lookup
        self._path = path
        self.complete = False

    def on_loop(self, query: RegistryQuery, as_of: int) -> RegistryPage | None:
        """The page, when the query walks an index for as many rows as it returns (cheaper
        on the event loop's own connection than a hop to the reader thread); None for a
        query that may scan, to run by `select` on the reader thread."""
        try:
            if len(query.account_ids) == 1 and query.limit:  # GetAccount: one key
                (account_id,) = query.account_ids
                row = self._lookup.execute(_ONE_REGISTERED, (account_id,)).fetchone()
                entry = None if row is None else _registered(row)
                found = [entry] if entry is not None and query.admits(entry, as_of) else []
                return RegistryPage(found, as_of, self.complete)
            if query.account_ids or query.limit == 0 or _one_owner_only(query):
                return self.select(self._lookup, query, as_of)
        except sqlite3.Error as error:
            raise EventLogUnavailable(f"the event log at {self._path} failed: {error}") from error
        return None

    def select(self, conn: sqlite3.Connection, query: RegistryQuery, as_of: int) -> RegistryPage:
        """The entries the query admits as of cursor `as_of`, by one statement."""
        where = ["deleted = 0", "cursor <= ?", "account_id > ?"]
        values: list[object] = [as_of, query.after_account]
        for column, allowed in (
            ("origin_owner_id", query.origin_owner_ids),
            ("provider", query.providers),
            ("account_id", query.account_ids),
            ("status", query.statuses),
        ):
            if allowed:
                where.append(f"{column} IN ({', '.join('?' * len(allowed))})")
                values.extend(sorted(allowed))
        rows = conn.execute(
            f"SELECT {_REGISTERED} FROM accounts WHERE {' AND '.join(where)}"  # noqa: S608 - columns and placeholders only
            " ORDER BY account_id LIMIT ?",
            (*values, query.limit + 1),
        ).fetchall()
        entries = [_registered(row) for row in rows[: query.limit]]
        return RegistryPage(entries, as_of, self.complete, len(rows) > query.limit)
