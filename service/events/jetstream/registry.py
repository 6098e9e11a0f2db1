"""The account registry on JetStream: the accounts bucket holds every account's last
recorded state (what reconciliation compares, and the registry entry), and each replica
keeps an in-memory index of the live accounts that tells a read which keys to fetch.

Whatever order replicas write in, the entry of the latest event stays: a write is a
compare-and-set that never replaces a later cursor. The bucket also holds a few meta keys
(whether the registry is complete, how far every event is folded into it, the stream's
incarnation), which no account token can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.js.errors
from nats.aio.msg import Msg

from service.events.jetstream.codec import from_registry_value, registry_value, token
from service.events.jetstream.connection import NATS_ERRORS, Connection
from service.events.model import EventLogUnavailable, KnownAccount
from service.events.registry import RegisteredAccount, RegistryPage, RegistryQuery
from service.events.tail import Tail

_MAX_CONFLICT_RETRIES = 20
_REGISTRY_READS_IN_FLIGHT = 64  # bucket reads of one registry page sent at once
_LOAD_BATCH = 1024  # bucket messages read at a time when loading the index
# Keys no account token can be: tokens are base64url or "=" and hex, never with a dot.
_COMPLETE_KEY = "meta.registry-complete"
_THROUGH_KEY = "meta.registry-through"  # every event up to it is in the registry
# The stream incarnation whose cursors the replicas hand out, and the last sequence a
# bare cursor of the previous release may name in it ("<tag> <bare_through>").
INCARNATION_KEY = "meta.incarnation"
_META_KEYS = frozenset({_COMPLETE_KEY, _THROUGH_KEY, INCARNATION_KEY})


class JetStreamRegistry:
    """The accounts bucket and this replica's index of it; an `AccountRegistry`."""

    def __init__(self, connection: Connection, tail: Tail) -> None:
        self._connection = connection
        self._tail = tail
        # This replica's index of the live accounts in the registry (what a read filters
        # on, owner and provider as hashes): the bucket as loaded at open, then every
        # entry written or folded here, so it holds every live account whose last event
        # is within the tail.
        self._index: dict[str, _Indexed] = {}
        self._complete = False
        self._watermark_written = 0
        self._watermark_at = 0.0

    async def known_accounts(self) -> dict[str, KnownAccount]:
        """Every account's last recorded state, from the accounts bucket."""
        try:
            keys = await self._connection.current.accounts.keys()
        except nats.js.errors.NoKeysError:
            return {}
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        known: dict[str, KnownAccount] = {}
        for key in keys:
            if key in _META_KEYS:
                continue
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await self._connection.current.accounts.get(key)
                if entry.value:
                    account, _ = from_registry_value(entry.value)
                    known[account.account_id] = account
        return known

    async def registry(self, query: RegistryQuery) -> RegistryPage:
        """Registry entries the query admits as of the cursor this replica's tail has
        reached (entries set by later events are left out: they come to a stream after
        that cursor). Which accounts to read comes from this replica's index of the
        registry (a bucket listing can miss keys rewritten meanwhile), their state from
        the bucket, one read each."""
        if self._connection.closed:
            raise EventLogUnavailable("the event log is closed")
        as_of = self._tail.latest if query.as_of is None else query.as_of
        if query.limit == 0:  # only whether the registry is complete
            return RegistryPage([], as_of, self._complete)
        if query.account_ids:
            candidates = sorted(query.account_ids)
        else:
            wanted = _Wanted.of(query, as_of)
            indexed = (entry.account_id for entry in self._index.values() if wanted.admits(entry))
            candidates = heapq.nsmallest(query.limit + 1, indexed)
        try:
            values = await self._values(candidates[: query.limit])
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        states = (from_registry_value(value)[1] for value in values if value)
        entries = [entry for entry in states if query.admits(entry, as_of)]
        more = len(candidates) > query.limit
        return RegistryPage(entries, as_of, self._complete, more)

    async def _values(self, account_ids: Sequence[str]) -> list[bytes | None]:
        """The bucket's values of the accounts, in order (None: no key), read
        `_REGISTRY_READS_IN_FLIGHT` at a time: one connection carries them all, so a
        page waits about one round trip per group rather than one per account."""

        async def value_of(account_id: str) -> bytes | None:
            try:
                return (await self._connection.current.accounts.get(token(account_id))).value
            except nats.js.errors.KeyNotFoundError:
                return None

        values: list[bytes | None] = []
        for start in range(0, len(account_ids), _REGISTRY_READS_IN_FLIGHT):
            group = account_ids[start : start + _REGISTRY_READS_IN_FLIGHT]
            values += await asyncio.gather(*map(value_of, group))
        return values

    async def mark_registry_complete(self) -> None:
        """Records that a full listing of StackOne has been folded into the registry."""
        if self._complete:
            return  # it never turns false again
        try:
            await self._connection.current.accounts.put(_COMPLETE_KEY, b"1")
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        self._complete = True

    def holds(self, account_id: str) -> bool:
        """Whether this replica's index has the account live."""
        return account_id in self._index

    def holds_later(self, account_id: str, cursor: int) -> bool:
        """Whether this replica's index has the account live at `cursor` or later."""
        held = self._index.get(account_id)
        return held is not None and held.cursor >= cursor

    async def load(self) -> None:
        """Reads the whole accounts bucket into this replica's index, from its stream:
        a key rewritten while it is read moves to a later message, which is read too."""
        stream = f"KV_{self._connection.options.stream}_ACCOUNTS"
        prefix = f"$KV.{self._connection.options.stream}_ACCOUNTS."
        js = self._connection.current.js
        start, last = 1, (await js.stream_info(stream)).state.last_seq
        while start <= last:
            try:
                messages = await self._connection.fetch_from(
                    stream, prefix + ">", start, _LOAD_BATCH
                )
            except TimeoutError:
                return  # nothing is left after `start` (rewritten keys moved past `last`)
            for message in messages:
                self._load_value(message, prefix)
            if not messages:
                return
            start = messages[-1].metadata.sequence.stream + 1
            last = max(last, (await js.stream_info(stream)).state.last_seq)

    def _load_value(self, message: Msg, prefix: str) -> None:
        if (message.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not message.data:
            return
        key = message.subject.removeprefix(prefix)
        if key == _COMPLETE_KEY:
            self._complete = message.data == b"1"
        elif key not in _META_KEYS:
            entry = from_registry_value(message.data)[1]
            if entry.account:  # a value written before the registry holds no account
                self._keep(entry)

    def _keep(self, entry: RegisteredAccount) -> None:
        """Puts an entry in this replica's index unless it holds a later one; a deletion
        takes the account out (a tombstone answers no read, and the bucket, which every
        read checks again, keeps it)."""
        held = self._index.get(entry.account_id)
        if held is not None and held.cursor >= entry.cursor:
            return
        if entry.deleted:
            self._index.pop(entry.account_id, None)
        else:
            self._index[entry.account_id] = _Indexed.of(entry)

    async def register(self, known: KnownAccount, entry: RegisteredAccount) -> None:
        """Writes an account's entry in the bucket (and this replica's index) unless the
        bucket holds a later one: whatever order replicas write in, the latest stays."""
        value = registry_value(known, entry)

        def newer(current: bytes | None) -> bytes | None:
            held = from_registry_value(current)[1] if current else None
            return value if held is None or held.cursor < entry.cursor else None

        key = token(entry.account_id)
        if entry.account_id not in self._index:  # most likely a new account: no read first
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await self._connection.current.accounts.create(key, value)
                self._keep(entry)
                return
        kept = await self.compare_and_set(key, newer)
        if kept and (latest := from_registry_value(kept)[1]).account:
            self._keep(latest)

    async def registered(self, account_id: str) -> RegisteredAccount | None:
        """The bucket's registry entry of an account whose events are all pruned."""
        try:
            value = (await self._connection.current.accounts.get(token(account_id))).value
        except nats.js.errors.KeyNotFoundError:
            return None
        entry = from_registry_value(value)[1] if value else None
        return entry if entry is not None and entry.account else None

    async def folded_through(self) -> int:
        """The cursor up to which every event is known to be in the registry."""
        try:
            value = (await self._connection.current.accounts.get(_THROUGH_KEY)).value
        except nats.js.errors.KeyNotFoundError:
            return 0
        return int(value or b"0")

    async def advance_watermark(self) -> None:
        """Records that every event up to this replica's tail is in the registry (each
        was written by its appender before it reached the tail, or folded by the
        follower), at most once a second; a restart folds only what follows it."""
        now = time.monotonic()
        latest = self._tail.latest
        if latest <= self._watermark_written or now - self._watermark_at < 1.0:
            return
        self._watermark_at = now

        def higher(current: bytes | None) -> bytes | None:
            return None if int(current or b"0") >= latest else str(latest).encode()

        await self.compare_and_set(_THROUGH_KEY, higher)
        self._watermark_written = latest

    async def compare_and_set(
        self, key: str, new_value: Callable[[bytes | None], bytes | None]
    ) -> bytes:
        """Compare-and-set of one bucket key: writes `new_value(current)` unless it is
        None, again if another writer got there between the read and the write; returns
        the value the key holds after."""
        accounts = self._connection.current.accounts
        for _ in range(_MAX_CONFLICT_RETRIES):
            try:
                current = await accounts.get(key)
            except nats.js.errors.KeyNotFoundError:
                current = None
            held = current.value if current is not None else None
            value = new_value(held)
            if value is None:
                return held or b""
            try:
                if current is None:
                    await accounts.create(key, value)
                else:
                    await accounts.update(key, value, last=current.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # written meanwhile: compare again
            return value
        raise EventLogUnavailable(f"the registry's key {key} kept changing")


@dataclass(frozen=True, slots=True)
class _Indexed:
    """A live account in a replica's registry index: a few hundred bytes, whatever the
    account holds. Owner and provider are kept as hashes: a collision only costs a
    bucket read, whose entry the query checks again."""

    account_id: str
    cursor: int
    owner: int
    provider: int
    status: str

    @classmethod
    def of(cls, entry: RegisteredAccount) -> _Indexed:
        return cls(
            entry.account_id,
            entry.cursor,
            hash(entry.origin_owner_id),
            hash(entry.provider),
            entry.status,
        )


@dataclass(frozen=True, slots=True)
class _Wanted:
    """A registry query as the index can check it."""

    query: RegistryQuery
    as_of: int
    owners: frozenset[int]
    providers: frozenset[int]

    @classmethod
    def of(cls, query: RegistryQuery, as_of: int) -> _Wanted:
        return cls(
            query,
            as_of,
            frozenset(map(hash, query.origin_owner_ids)),
            frozenset(map(hash, query.providers)),
        )

    def admits(self, entry: _Indexed) -> bool:
        query = self.query
        return (
            entry.cursor <= self.as_of
            and entry.account_id > query.after_account
            and (not self.owners or entry.owner in self.owners)
            and (not self.providers or entry.provider in self.providers)
            and (not query.statuses or entry.status in query.statuses)
        )
