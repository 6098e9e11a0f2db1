"""The event log on NATS JetStream, shared by every replica of the service.

- Each event is a message on `<prefix>.<account token>` in one stream; its cursor is the
  stream sequence. `Nats-Msg-Id` is the event id, so JetStream drops redeliveries within
  the stream's duplicate window, whichever replica they reach.
- Nothing in the data can break the connection: the account token (also the accounts
  bucket's key) and `Nats-Msg-Id` are bounded, and a message over the server's
  `max_payload` is refused here, before the server would close the connection for it.
- "Already known" (the same change reported by a webhook and by reconciliation) is
  checked against the last message on the account's subject, and the publish carries
  `Nats-Expected-Last-Subject-Sequence`: if another replica recorded something for that
  account in between, JetStream refuses the publish and the check runs again. Two
  replicas sweeping at once therefore record a change once.
- Two key-value buckets hold what the stream's retention must not forget: the last state
  of every account (for reconciliation and the registry) and the ids recorded within the
  dedup window (so a redelivery of a recorded webhook is answered without a new event).
- The inbox is a second stream, `<stream>_INBOX` on `<prefix>_inbox.<account token>`,
  limited to `inbox_limit` messages with new ones discarded (the gateway then answers
  503). Its `Nats-Msg-Id` is the event id, so a redelivery while pending is dropped at
  the door. Every event carries `inbox_through`, the highest inbox sequence its account
  has had recorded (carried forward by later events of the account); a verifier
  settles an entry by publishing the event with the account's expected last sequence,
  then purging the account's inbox subject up to it. A verifier (of any replica) that
  finds an entry at or below `inbox_through` knows it is recorded, whatever crashed.
- Each replica follows the stream into an in-memory tail that all its subscribers share.
  A core-NATS subscription to the stream's subjects wakes the follower at once; a poll
  every second catches anything that wake-up missed (e.g. across a reconnect). Reads
  older than the tail use a short-lived consumer starting at the cursor.
- nats-py reconnects by itself after a drop (and subscribes again). When it closes the
  connection for good (an `-ERR` from the server, or its attempts exhausted), the log
  opens a fresh one, with backoff, and binds the stream, buckets and subscriptions
  again; meanwhile `check_writable` reports the log unavailable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.header import Header, decode_header
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    PubAck,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from service.aio import cancel_all
from service.api.v1 import stackone_connect_pb2 as pb
from service.events import cursors
from service.events.cursors import UNTAGGED, Incarnation
from service.events.log import Backend, ReportFailure, ignore_failure
from service.events.model import (
    Accepted,
    AppendOutcome,
    EventLogUnavailable,
    EventRecord,
    InboxEntry,
    InboxFull,
    InboxStats,
    KnownAccount,
    LogBounds,
    Retention,
    Settlement,
    StoredEvent,
    Webhook,
    already_known,
    deletes_account,
)
from service.events.records import event_source
from service.events.registry import (
    RegisteredAccount,
    RegistryPage,
    RegistryQuery,
    enriched,
    registered,
)
from service.events.tail import DEFAULT_TAIL_BYTES, Tail, Watermark
from service.retry import RetryPolicy

_log = logging.getLogger(__name__)

_WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-sequence check
_MAX_CONFLICT_RETRIES = 20
_MAX_ENTRIES_PER_SETTLE = 1000
_FOLLOW_BATCH = 1024  # events the follower reads at a time
_APPENDED_IDS_KEPT = 4096  # far more than appends in flight while notifications arrive
_REGISTRY_READS_IN_FLIGHT = 64  # bucket reads of one registry page sent at once
_HEADER = "Sc-Event"  # our index columns, as JSON, so reads need not parse the body
_INBOX_HEADER = "Sc-Inbox"
_TRACEPARENT_HEADER = "traceparent"
# A key no account token can be: tokens are base64url or "=" and hex, never with a dot.
_REGISTRY_COMPLETE_KEY = "meta.registry-complete"
_REGISTRY_THROUGH_KEY = "meta.registry-through"  # every event up to it is in the registry
# The stream incarnation whose cursors the replicas hand out, and the last sequence a
# bare cursor of the previous release may name in it ("<tag> <bare_through>").
_INCARNATION_KEY = "meta.incarnation"
_META_KEYS = frozenset({_REGISTRY_COMPLETE_KEY, _REGISTRY_THROUGH_KEY, _INCARNATION_KEY})
# base64url of 1,020 bytes (1,360 characters): every id of up to 255 characters, the
# gateway's bound, keeps its token; subjects stay far below the server's control line.
_MAX_TOKEN_BYTES = 1020
_MAX_MSG_ID = 255
_RECONNECT_WAIT = 0.5  # between nats-py's own attempts after a drop
_RECONNECT_ATTEMPTS = 10  # then it closes for good and the log opens a fresh connection
# The log's waits between fresh connections, and between the follower's failed reads.
_REOPENING = RetryPolicy(attempts=None, first_wait=0.1, longest_wait=5.0)
_FOLLOWING = RetryPolicy(attempts=None, first_wait=0.5, longest_wait=5.0)
NATS_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.Error,
    nats.js.errors.Error,
    asyncio.TimeoutError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class JetStreamOptions:
    """What opening the JetStream event log takes: the NATS server, and the stream and
    buckets a replica uses (all replicas must agree on them).

    Attributes:
        url: the NATS server (`nats://` or `tls://`).
        stream: the events' stream; its buckets and inbox stream are named after it.
        subject_prefix: subjects of the stream are `<prefix>.<account token>`.
        storage: "file" or "memory", for the streams and buckets.
        replicas: copies JetStream keeps of each (a NATS cluster's size).
        retention: the stream's max age and count and the dedup window, which JetStream
            enforces itself (no sweep runs).
        request_timeout: seconds a request to the server may take.
        inbox_limit: most webhooks waiting for verification (`InboxFull` past it).
        inbox_duplicate_window: seconds JetStream drops the redeliveries of a pending
            webhook itself; later ones are recognised by the ids bucket or by
            `inbox_through`. Cover the time a webhook may stay pending.
        tail_bytes: memory the newest events may take, shared by every stream.
    """

    url: str
    stream: str = "STACKONE_CONNECT_EVENTS"
    subject_prefix: str = "stackone_connect.events"
    storage: str = "file"
    replicas: int = 1
    retention: Retention = field(default_factory=Retention)
    request_timeout: float = 2.0
    inbox_limit: int = 100_000
    inbox_duplicate_window: float = 120.0
    tail_bytes: int = DEFAULT_TAIL_BYTES

    @property
    def inbox_stream(self) -> str:
        """The inbox stream's name."""
        return f"{self.stream}_INBOX"

    @property
    def inbox_prefix(self) -> str:
        """The inbox's subject prefix (never overlapping the events' subjects)."""
        return f"{self.subject_prefix}_inbox"


def _token(account_id: str) -> str:
    """A subject token and accounts-bucket key for any account id: its unpadded base64url
    (subjects forbid '.', '*', '>' and spaces), or for a long id '=' and its SHA-256, so
    a subject never outgrows the server's control line; '=' never occurs in the former."""
    raw = account_id.encode(errors="surrogatepass")
    if len(raw) > _MAX_TOKEN_BYTES:
        return "=" + hashlib.sha256(raw).hexdigest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") or "_"


def _msg_id(event_id: str) -> str:
    """`Nats-Msg-Id` for an event id: the id itself when a header keeps it verbatim
    (nats-py strips surrounding spaces and blanks line breaks, which would make two ids
    one), else '=' and its SHA-256, which no verbatim id starts with."""
    verbatim = (
        0 < len(event_id) <= _MAX_MSG_ID
        and event_id.isprintable()
        and event_id == event_id.strip()
        and not event_id.startswith("=")
    )
    if verbatim:
        return event_id
    return "=" + hashlib.sha256(event_id.encode(errors="surrogatepass")).hexdigest()


def _id_key(event_id: str) -> str:
    return hashlib.sha256(event_id.encode(errors="surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class _Binding:
    """One NATS connection and what the log uses on it, replaced whole when it closes."""

    connection: NatsClient
    js: JetStreamContext
    accounts: KeyValue
    ids: KeyValue


class JetStreamEventLog:
    """An `EventLog` in a JetStream stream. Create it with `JetStreamEventLog.open`."""

    def __init__(self, options: JetStreamOptions, *, report_failure: ReportFailure) -> None:
        self._options = options
        self._binding: _Binding | None = None
        self._wildcard = f"{options.subject_prefix}.>"
        self._tail = Tail(options.tail_bytes)
        self._pruned_through = 0
        self._poke = asyncio.Event()
        # `Nats-Msg-Id`s of this replica's latest appends: their notifications wake no one
        # (the appender puts them in the tail itself); bounded, oldest out first.
        self._appended_ids: dict[str, None] = {}
        self._connection_lost = asyncio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        # Counts the inbox publications seen (of any replica): hints to read the inbox.
        self._inbox_hints = Watermark()
        self._inbox_hints_seen = 0
        # The highest inbox sequence seen: a recreated inbox starts above it, since
        # recorded events name inbox positions (`inbox_through`).
        self._inbox_latest = 0
        self._restoring = asyncio.Lock()
        self.reconnects = 0  # nats-py's own, after a drop
        self.reopens = 0  # fresh connections after nats-py closed one for good
        self.restores = 0  # streams or buckets found missing and created again
        self._watermark_written = 0
        self._watermark_at = 0.0
        # This replica's index of the live accounts in the registry (what a read filters
        # on, owner and provider as hashes): the bucket as loaded at open, then every
        # entry written or folded here, so it holds every live account whose last event
        # is within the tail.
        self._index: dict[str, _Indexed] = {}
        # Own appends the follower will read (others came in between): already written.
        self._registered_here: set[int] = set()
        self._complete = False
        self._incarnation = UNTAGGED  # until `open` reads the stream's
        self._created: datetime | None = None  # the stream's creation time, which names it
        self.background_failures: Counter[str] = Counter()  # by task; each was retried
        self._report_failure = report_failure

    @classmethod
    async def open(
        cls, options: JetStreamOptions, *, report_failure: ReportFailure = ignore_failure
    ) -> JetStreamEventLog:
        """Connects, creates or updates the stream and buckets, and starts following;
        `report_failure` hears of each failure the follower or the reconnection survives,
        as `background_failures` counts them."""
        log = cls(options, report_failure=report_failure)
        log._binding, info = await log._bind()
        await log._establish_incarnation(info)
        log._pruned_through = max(0, info.state.first_seq - 1)
        await log._load_registry()
        await log._fold_since_watermark(info.state.last_seq)
        log._tail.start_at(info.state.last_seq)
        log._tasks = [
            asyncio.create_task(log._follow(), name="jetstream-follow"),
            asyncio.create_task(log._keep_connected(), name="jetstream-connection"),
        ]
        return log

    @property
    def _nats(self) -> _Binding:
        if self._binding is None:
            raise EventLogUnavailable(f"not connected to NATS at {self._options.url}")
        return self._binding

    # --- EventLog interface -------------------------------------------------------

    async def append(self, records: Sequence[EventRecord]) -> list[AppendOutcome]:
        """Publishes records in order; each is on the stream when this returns."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        try:
            return [(await self._append_one(record)).outcome for record in records]
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream did not take the event: {error!r}") from error

    async def read(self, after: int, limit: int) -> list[StoredEvent]:
        """Events after `after`, from the shared tail when it reaches back that far."""
        cached = self._tail.read(after, limit)
        if cached is not None:
            return cached
        try:
            return await self._fetch(after, limit)
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream read failed: {error!r}") from error

    @property
    def latest_cursor(self) -> int:
        """The newest cursor this replica has seen."""
        return self._tail.latest

    @property
    def incarnation(self) -> Incarnation:
        """The stream's incarnation, named by its creation time: a stream created again
        (by a replica after NATS lost it, or by hand) is another."""
        return self._incarnation

    async def _establish_incarnation(self, info: StreamInfo) -> None:
        """Takes the incarnation of the stream `info` describes, unless it is the one
        known. The first replica of this release to see a stream lets bare cursors (of
        the previous release, which had no tag) name its events; a stream that replaced
        one known before takes none, since they named the old stream's events."""
        if self._created is not None and info.created == self._created:
            return
        created = info.created.isoformat() if info.created is not None else ""
        tag = cursors.tag_of(f"{self._options.stream}@{created}")

        def taken(current: bytes | None) -> bytes | None:
            held = (current or b"").split()
            if held and int(held[0]) == tag:
                return None
            return f"{tag} {-1 if held else cursors.MAX_SEQUENCE}".encode()

        try:
            held = (await self._set_if(_INCARNATION_KEY, taken)).split()
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        self._incarnation = Incarnation(tag, bare_through=int(held[1]))
        self._created = info.created

    async def bounds(self, *, exact: bool = False) -> LogBounds:
        """Pruned-through and latest cursors; `exact` asks the server, not this replica."""
        if exact:
            try:
                info = await self._nats.js.stream_info(self._options.stream)
            except NATS_ERRORS as error:
                raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
            self._pruned_through = max(self._pruned_through, info.state.first_seq - 1)
            await self._establish_incarnation(info)
            return LogBounds(self._pruned_through, max(self._tail.latest, info.state.last_seq))
        return LogBounds(self._pruned_through, self._tail.latest)

    def wait_for_append(self, after: int, timeout: float) -> asyncio.Future[None]:
        """Done once this replica has seen an event past `after`, or after `timeout`."""
        return self._tail.wait_for_append(after, timeout)  # a future: no frame per waiter

    def stop_waits(self) -> None:
        """Ends every current and later `wait_for_append` at once (the server is draining)."""
        self._tail.stop_waits()

    async def known_accounts(self) -> dict[str, KnownAccount]:
        """Every account's last recorded state, from the accounts bucket."""
        try:
            keys = await self._nats.accounts.keys()
        except nats.js.errors.NoKeysError:
            return {}
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        known: dict[str, KnownAccount] = {}
        for key in keys:
            if key in _META_KEYS:
                continue
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await self._nats.accounts.get(key)
                if entry.value:
                    account, _ = _from_registry_value(entry.value)
                    known[account.account_id] = account
        return known

    async def registry(self, query: RegistryQuery) -> RegistryPage:
        """Registry entries the query admits as of the cursor this replica's tail has
        reached (entries set by later events are left out: they come to a stream after
        that cursor). Which accounts to read comes from this replica's index of the
        registry (a bucket listing can miss keys rewritten meanwhile), their state from
        the bucket, one read each."""
        if self._closed:
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
            values = await self._registry_values(candidates[: query.limit])
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        states = (_from_registry_value(value)[1] for value in values if value)
        entries = [entry for entry in states if query.admits(entry, as_of)]
        more = len(candidates) > query.limit
        return RegistryPage(entries, as_of, self._complete, more)

    async def _registry_values(self, account_ids: Sequence[str]) -> list[bytes | None]:
        """The bucket's values of the accounts, in order (None: no key), read
        `_REGISTRY_READS_IN_FLIGHT` at a time: one connection carries them all, so a
        page waits about one round trip per group rather than one per account."""

        async def value_of(account_id: str) -> bytes | None:
            try:
                return (await self._nats.accounts.get(_token(account_id))).value
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
            await self._nats.accounts.put(_REGISTRY_COMPLETE_KEY, b"1")
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        self._complete = True

    async def _load_registry(self) -> None:
        """Reads the whole accounts bucket into this replica's index, from its stream:
        a key rewritten while it is read moves to a later message, which is read too."""
        stream = f"KV_{self._options.stream}_ACCOUNTS"
        prefix = f"$KV.{self._options.stream}_ACCOUNTS."
        start, last = 1, (await self._nats.js.stream_info(stream)).state.last_seq
        while start <= last:
            try:
                messages = await self._fetch_from(stream, prefix + ">", start, 1024)
            except TimeoutError:
                return  # nothing is left after `start` (rewritten keys moved past `last`)
            for message in messages:
                self._load_value(message, prefix)
            if not messages:
                return
            start = messages[-1].metadata.sequence.stream + 1
            last = max(last, (await self._nats.js.stream_info(stream)).state.last_seq)

    def _load_value(self, message: Msg, prefix: str) -> None:
        if (message.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not message.data:
            return
        key = message.subject.removeprefix(prefix)
        if key == _REGISTRY_COMPLETE_KEY:
            self._complete = message.data == b"1"
        elif key not in _META_KEYS:
            entry = _from_registry_value(message.data)[1]
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

    # --- Inbox --------------------------------------------------------------------

    async def accept(self, entry: InboxEntry, alone: EventRecord | None = None) -> Accepted:
        """Publishes a webhook to the inbox unless it is recorded or already pending.

        Always to the inbox, even with `alone`: whether an account has entries pending
        is known to the shared stream, not to this replica, so the verifier (on any
        replica) keeps each account's order.
        """
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        headers = {"Nats-Msg-Id": _msg_id(entry.event_id), **_inbox_headers(entry)}
        try:
            if await self._recorded(entry.event_id) is not None:
                return Accepted.REPEATED
            subject = self._inbox_subject(entry.account_id)
            ack = await self._publish(subject, entry.body, headers, self._options.inbox_stream)
            self._inbox_latest = max(self._inbox_latest, ack.seq)
            held = await self._held_as(entry.account_id, ack.seq) if ack.duplicate else None
            if held is not None:
                return held
            if ack.duplicate:
                # Within the window JetStream remembers the id of an entry that is gone
                # from the inbox yet was never recorded: taken again, under an id of its own.
                headers["Nats-Msg-Id"] = _msg_id(f"{entry.event_id}\n{ack.seq}")
                ack = await self._publish(subject, entry.body, headers, self._options.inbox_stream)
        except nats.js.errors.APIError as error:
            if "maximum messages" in str(error.description or ""):
                raise InboxFull(
                    f"{self._options.inbox_limit} webhooks are waiting for verification (the limit)"
                ) from error
            raise EventLogUnavailable(f"JetStream did not take the webhook: {error!r}") from error
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream did not take the webhook: {error!r}") from error
        return Accepted.QUEUED

    async def pending(self, after: int, limit: int) -> list[InboxEntry]:
        """Inbox entries after `after`, through a short-lived consumer."""
        stream = self._options.inbox_stream
        try:
            info = await self._nats.js.stream_info(stream)
            self._inbox_latest = max(self._inbox_latest, info.state.last_seq)
            if info.state.messages == 0 or info.state.last_seq <= after:
                return []
            start = max(after + 1, info.state.first_seq)
            messages = await self._fetch_from(
                stream, f"{self._options.inbox_prefix}.>", start, limit
            )
        except TimeoutError:
            return []  # the newer entries were settled meanwhile
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream inbox read failed: {error!r}") from error
        return [
            _inbox_entry(message.metadata.sequence.stream, message.headers, message.data)
            for message in messages
        ]

    async def unsettled(self, entries: Sequence[InboxEntry]) -> list[InboxEntry]:
        """Every entry of the account still waiting above its `inbox_through`, read from
        the stream rather than taken from `entries`: replicas read the inbox
        independently, so this one may not have seen all of them, and settling must
        never skip an earlier entry of the account."""
        if not entries:
            return []
        account_id = entries[0].account_id
        try:
            through = (await self._last_on(self._subject(account_id))).inbox_through
            if through >= min(entry.seq for entry in entries):
                await self._clear_inbox(account_id, through)  # settled, not yet cleared
            return await self._inbox_of(account_id, through)
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error

    async def _inbox_of(self, account_id: str, after: int) -> list[InboxEntry]:
        """The account's inbox entries after sequence `after`, oldest first (bounded)."""
        subject = self._inbox_subject(account_id)
        found: list[InboxEntry] = []
        while len(found) < _MAX_ENTRIES_PER_SETTLE:
            try:
                message = await self._nats.js.get_msg(
                    self._options.inbox_stream, seq=after + 1, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError:
                break
            entry = _inbox_entry(message.seq or 0, message.headers, message.data or b"")
            found.append(entry)
            after = entry.seq
        return found

    async def settle(
        self, entries: Sequence[InboxEntry], records: Sequence[EventRecord]
    ) -> Settlement:
        """Publishes `records` in order, then purges the account's inbox subject through
        the last entry they were found to cover. A record whose first webhook another
        replica recorded already (in a group that may have ended sooner) covers only what
        that replica's event covered: the entries past it stay in the inbox, unrecorded,
        and later records are not published ahead of them."""
        if self._closed:
            raise EventLogUnavailable("the event log is closed")
        outcomes: list[AppendOutcome] = []
        covered = 0
        try:
            for record in records:
                appended = await self._append_one(record)
                outcomes.append(appended.outcome)
                covered = max(covered, appended.covered_through)
                if appended.covered_through < record.inbox_through:
                    break  # the rest is read again, so that it is recorded in order
            if entries and covered:
                await self._clear_inbox(entries[0].account_id, covered)
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream did not take the event: {error!r}") from error
        return Settlement(outcomes, [entry for entry in entries if entry.seq > covered])

    async def wait_for_inbox(self, after: int, timeout: float) -> None:
        """Returns when a webhook reaches the inbox (of any replica), or after `timeout`."""
        await self._inbox_hints.wait_past(self._inbox_hints_seen, timeout)
        self._inbox_hints_seen = self._inbox_hints.value  # `pending` reads the truth

    async def inbox_stats(self) -> InboxStats:
        """Messages in the inbox stream and the receipt time of the first."""
        stream = self._options.inbox_stream
        try:
            info = await self._nats.js.stream_info(stream)
            if info.state.messages == 0:
                return InboxStats(0, None)
            # The first entry may be settled meanwhile: the first still there, if any.
            first = await self._nats.js.get_msg(
                stream,
                seq=info.state.first_seq,
                subject=f"{self._options.inbox_prefix}.>",
                next=True,
            )
        except nats.js.errors.NotFoundError:
            return InboxStats(0, None)  # every entry was settled since `stream_info`
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream is unavailable: {error!r}") from error
        fields = _fields(first.headers, _INBOX_HEADER)
        return InboxStats(info.state.messages, float(fields["received_at"]))

    async def _held_as(self, account_id: str, seq: int) -> Accepted | None:
        """What became of inbox entry `seq` of the account: still waiting (DUPLICATE),
        covered by a recorded event (REPEATED), or neither (None)."""
        try:
            await self._nats.js.get_msg(self._options.inbox_stream, seq=seq)
        except nats.js.errors.NotFoundError:
            if (await self._last_on(self._subject(account_id))).inbox_through >= seq:
                return Accepted.REPEATED
            return None
        return Accepted.DUPLICATE

    async def _clear_inbox(self, account_id: str, through: int) -> None:
        # Purges the account's subject below `through + 1`: entries up to it are recorded.
        await self._nats.js.purge_stream(
            self._options.inbox_stream, seq=through + 1, subject=self._inbox_subject(account_id)
        )

    def _inbox_subject(self, account_id: str) -> str:
        return f"{self._options.inbox_prefix}.{_token(account_id)}"

    def _subject(self, account_id: str) -> str:
        return f"{self._options.subject_prefix}.{_token(account_id)}"

    async def _on_inbox_notification(self, message: Msg) -> None:
        self._inbox_hints.advance(self._inbox_hints.value + 1)

    async def check_writable(self) -> None:
        """Raises `EventLogUnavailable` unless NATS is connected and the streams answer;
        streams or buckets found missing (a NATS server back with memory storage, or a
        replaced store) are created again first, as at start-up."""
        if self._closed or not self._nats.connection.is_connected:
            raise EventLogUnavailable(f"not connected to NATS at {self._options.url}")
        try:
            await self._nats.js.stream_info(self._options.stream)
            await self._nats.js.stream_info(self._options.inbox_stream)
        except nats.js.errors.NotFoundError:
            await self._restore()
        except NATS_ERRORS as error:
            raise EventLogUnavailable(f"JetStream stream unavailable: {error!r}") from error

    async def _restore(self) -> None:
        """Creates whatever of the streams and buckets is missing. A stream created again
        starts past the last sequence this replica saw, so no cursor (nor inbox position
        named by a recorded event) is ever reused: subscribers behind it get OUT_OF_RANGE
        for the events that were lost with the old stream."""
        async with self._restoring:
            try:
                created, _, _ = await _ensure_all(
                    self._nats.js,
                    self._options,
                    events_after=self._tail.latest,
                    inbox_after=self._inbox_latest,
                )
            except NATS_ERRORS as error:
                raise EventLogUnavailable(
                    f"JetStream streams cannot be created: {error!r}"
                ) from error
        if created:
            _log.warning(
                "NATS at %s had lost %s: created again as at start-up (events before "
                "cursor %d are gone)",
                self._options.url,
                ", ".join(created),
                self._tail.latest + 1,
            )
            self.restores += 1
            with contextlib.suppress(*NATS_ERRORS, EventLogUnavailable):
                await self._establish_incarnation(
                    await self._nats.js.stream_info(self._options.stream)
                )
            self._connected_again()

    async def enforce_retention(self, now: float | None = None) -> int:
        """JetStream enforces max age and count itself; this refreshes the pruned cursor."""
        pruned = (await self.bounds(exact=True)).pruned_through
        self._tail.prune(pruned)
        return pruned

    async def close(self) -> None:
        """Stops following and closes the connection (appends were acknowledged already)."""
        if self._closed:
            return
        self._closed = True
        await cancel_all(self._tasks)
        if self._binding is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._binding.connection.close()
        self._tail.wake_waiters()

    # --- Connection ---------------------------------------------------------------

    async def _bind(self) -> tuple[_Binding, StreamInfo]:
        """A fresh connection with the stream, inbox and buckets created or brought to
        the options, and the notifications subscribed; `EventLogUnavailable` if not."""
        options = self._options
        connection = NatsClient()
        try:
            await connection.connect(
                options.url,
                connect_timeout=options.request_timeout,  # type: ignore[arg-type]
                allow_reconnect=True,
                max_reconnect_attempts=_RECONNECT_ATTEMPTS,
                reconnect_time_wait=_RECONNECT_WAIT,  # type: ignore[arg-type]
                name="stackone-connect",
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
            js = connection.jetstream(timeout=options.request_timeout)
            _, accounts, ids = await _ensure_all(
                js, options, events_after=self._tail.latest, inbox_after=self._inbox_latest
            )
            info = await js.stream_info(options.stream)
            await connection.subscribe(self._wildcard, cb=self._on_notification)
            await connection.subscribe(f"{options.inbox_prefix}.>", cb=self._on_inbox_notification)
            await connection.flush()  # the server has the subscriptions before we rely on them
        except BaseException as error:  # a cancelled open must not leave a client running
            with contextlib.suppress(*NATS_ERRORS):
                await connection.close()
            if isinstance(error, NATS_ERRORS):
                raise EventLogUnavailable(
                    f"cannot reach NATS JetStream at {options.url}: {error!r}"
                ) from error
            raise
        return _Binding(connection, js, accounts, ids), info

    async def _keep_connected(self) -> None:
        """Opens a fresh connection whenever nats-py has closed the current one for good,
        retried under the retry policy; every failed attempt is logged and counted."""

        def failed(error: Exception) -> bool:
            self._background_failed("event_log_connection", error)
            return True  # until it opens: `close` cancels this task

        while not self._closed:
            self._connection_lost.clear()
            if not self._nats.connection.is_closed:
                # closed_cb wakes this; the timer covers a close that ran no callbacks.
                await _wait(self._connection_lost, 1.0)
                continue
            async for attempt in _REOPENING.attempts_of(failed):
                with attempt:
                    self._binding, _ = await self._bind()
            _log.warning("opened a fresh connection to NATS at %s", self._options.url)
            self._connected_again()
            self.reopens += 1

    def _connected_again(self) -> None:
        # Notifications sent while disconnected were lost: look at the stream and inbox now.
        self._poke.set()
        self._inbox_hints.advance(self._inbox_hints.value + 1)

    async def _on_error(self, error: Exception) -> None:
        _log.warning("NATS at %s: %r", self._options.url, error)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            _log.warning("disconnected from NATS at %s", self._options.url)

    async def _on_reconnected(self) -> None:
        _log.warning("reconnected to NATS at %s", self._options.url)
        self._connected_again()
        self.reconnects += 1
        # The server may be back without the streams (memory storage, a new store).
        with contextlib.suppress(EventLogUnavailable):
            await self._restore()

    async def _on_closed(self) -> None:
        self._connection_lost.set()

    def _background_failed(self, task: str, error: Exception) -> None:
        self.background_failures[task] += 1
        self._report_failure(task)
        expected = isinstance(error, (EventLogUnavailable, *NATS_ERRORS))  # NATS is away
        _log.error(
            "JetStream %s failed, retrying: %r", task, error, exc_info=None if expected else error
        )

    # --- Appending ----------------------------------------------------------------

    async def _append_one(self, original: EventRecord) -> _Appended:
        subject = self._subject(original.account_id)
        record = original
        for _ in range(_MAX_CONFLICT_RETRIES):
            recorded = await self._recorded(record.event_id)
            if recorded is not None:
                # Whoever recorded this id covered the inbox as far as it had read.
                through = min(record.inbox_through, recorded.inbox_through)
                return _Appended.duplicate(record, recorded.cursor, through)
            last = await self._last_on(subject)
            if last.event_id == record.event_id:  # another replica published it just now
                through = min(record.inbox_through, last.inbox_through)
                return _Appended.duplicate(record, last.sequence, through)
            if record.inbox_through and record.inbox_through <= last.inbox_through:
                return _Appended.duplicate(record, 0, record.inbox_through)  # settled already
            if already_known(record, last.known):
                # Remembered, as on SQLite, so a redelivery is dropped without another check.
                await self._remember_ids(record, 0)
                return _Appended.duplicate(record, 0, record.inbox_through)
            previous = last.entry
            if previous is None and record.account_id in self._index:
                # A live account whose events are pruned: the bucket still has its entry.
                previous = await self._registered(record.account_id)
            record = enriched(original, previous)
            recorded_at = time.time()
            inbox_through = max(record.inbox_through, last.inbox_through)
            headers = {
                "Nats-Msg-Id": _msg_id(record.event_id),
                "Nats-Expected-Last-Subject-Sequence": str(last.sequence),
                **_event_headers(record, recorded_at, inbox_through),
            }
            self._appended_ids[headers["Nats-Msg-Id"]] = None
            if len(self._appended_ids) > _APPENDED_IDS_KEPT:
                del self._appended_ids[next(iter(self._appended_ids))]
            try:
                ack = await self._publish(subject, record.body, headers, self._options.stream)
            except nats.js.errors.APIError as error:
                if error.err_code == _WRONG_LAST_SEQUENCE:
                    continue  # another replica recorded this account meanwhile: check again
                raise
            if ack.duplicate:  # recorded by another replica, how far unknown: read again
                return _Appended.duplicate(record, ack.seq, 0)
            await self._remember(record, ack.seq, recorded_at)
            self._appended_here(record, ack.seq, recorded_at)
            return _Appended(AppendOutcome(record.event_id, ack.seq, False), record.inbox_through)
        raise EventLogUnavailable(f"account {record.account_id} kept changing; retry")

    async def _publish(
        self, subject: str, body: bytes, headers: dict[str, str], stream: str
    ) -> PubAck:
        """Publishes to `stream`, refusing here what the server would refuse by closing
        the connection: a message (headers included) over its `max_payload`."""
        size = len(body) + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items()) + 14
        nats = self._nats
        if size > (most := nats.connection.max_payload):
            raise EventLogUnavailable(
                f"a message of {size} bytes is over NATS's max_payload ({most})"
            )
        return await nats.js.publish(subject, body, headers=headers, stream=stream)

    async def _last_on(self, subject: str) -> _LastEvent:
        """What the last event on `subject` (one account's) says."""
        try:
            message = await self._nats.js.get_last_msg(self._options.stream, subject)
        except nats.js.errors.NotFoundError:
            return _LastEvent(0, None, "", 0, None)
        fields = _fields(message.headers, _HEADER)
        known = KnownAccount(
            fields["account_id"],
            fields["status"],
            fields["updated_at"],
            deletes_account(fields["type"]),
            fields["source"],
        )
        sequence = int(message.seq or 0)
        return _LastEvent(
            sequence,
            known,
            str(fields["event_id"]),
            int(fields.get("inbox_through", 0)),
            registered(_stored_event(fields, sequence, message.data or b"")),
        )

    async def _recorded(self, event_id: str) -> _Recorded | None:
        """Where `event_id` was recorded (within the dedup window), if it was."""
        try:
            entry = await self._nats.ids.get(_id_key(event_id))
        except nats.js.errors.KeyNotFoundError:
            return None
        return _Recorded.parse(entry.value or b"0")

    async def _remember_ids(self, record: EventRecord, cursor: int) -> None:
        value = f"{cursor} {record.inbox_through}".encode()
        for event_id in record.ids:
            await self._nats.ids.put(_id_key(event_id), value)

    async def _remember(self, record: EventRecord, cursor: int, recorded_at: float) -> None:
        entry = registered(record.stored(cursor, recorded_at))
        await self._register(KnownAccount.recorded(record), entry)
        await self._remember_ids(record, cursor)

    async def _registered(self, account_id: str) -> RegisteredAccount | None:
        """The bucket's registry entry of an account whose events are all pruned."""
        try:
            value = (await self._nats.accounts.get(_token(account_id))).value
        except nats.js.errors.KeyNotFoundError:
            return None
        entry = _from_registry_value(value)[1] if value else None
        return entry if entry is not None and entry.account else None

    # --- Following ----------------------------------------------------------------

    async def _on_notification(self, message: Msg) -> None:
        # Another replica's event wakes the follower; each one of ours would have it read
        # the stream (a consumer each) for what the appender publishes itself.
        if (message.headers or {}).get("Nats-Msg-Id") not in self._appended_ids:
            self._poke.set()

    async def _follow(self) -> None:
        """Brings the tail up to the stream whenever woken (or every second) until the
        log closes; any failure is logged, counted and retried under the retry policy."""

        def failed(error: Exception) -> bool:
            self._background_failed("event_log_follow", error)
            return True  # until it reads: `close` cancels this task

        async def catch_up() -> bool:
            self._poke.clear()  # before reading, so a poke meanwhile is not lost
            return await self._catch_up()

        while not self._closed:
            behind = await _FOLLOWING.call(catch_up, failed)
            if not behind:
                await _wait(self._poke, 1.0)

    async def _catch_up(self) -> bool:
        """Reads one batch of newer events into the tail; True while more may wait."""
        info = await self._nats.js.stream_info(self._options.stream)
        self._pruned_through = max(self._pruned_through, info.state.first_seq - 1)
        if info.state.last_seq <= self._tail.latest:
            await self._advance_registry_watermark()
            return False
        events = await self._fetch(self._tail.latest, _FOLLOW_BATCH)
        await self._fold_into_registry(events)  # before readers see their cursors
        self._tail.publish(events)
        # A short read is all there was: what is appended meanwhile is this replica's own
        # (it publishes them itself) or pokes the follower. Reading on would chase the
        # appends with a consumer each.
        return len(events) >= _FOLLOW_BATCH

    # --- Registry repair ----------------------------------------------------------

    async def _fold_into_registry(self, events: Sequence[StoredEvent]) -> None:
        """Writes each event's registry entry unless a later one is known. The replica
        that appends an event writes its entry right after; one that died in between
        leaves it to whichever replica follows the event (every one does)."""
        for event in events:
            if event.cursor in self._registered_here:
                self._registered_here.discard(event.cursor)
                continue
            held = self._index.get(event.account_id)
            if held is None or held.cursor < event.cursor:
                await self._register(*_state_of(event))

    async def _register(self, known: KnownAccount, entry: RegisteredAccount) -> None:
        """Writes an account's entry in the bucket (and this replica's index) unless the
        bucket holds a later one: whatever order replicas write in, the latest stays."""
        value = _registry_value(known, entry)

        def newer(current: bytes | None) -> bytes | None:
            held = _from_registry_value(current)[1] if current else None
            return value if held is None or held.cursor < entry.cursor else None

        key = _token(entry.account_id)
        if entry.account_id not in self._index:  # most likely a new account: no read first
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await self._nats.accounts.create(key, value)
                self._keep(entry)
                return
        kept = await self._set_if(key, newer)
        if kept and (latest := _from_registry_value(kept)[1]).account:
            self._keep(latest)

    async def _advance_registry_watermark(self) -> None:
        """Records that every event up to this replica's tail is in the registry (each
        was written by its appender before it reached the tail, or folded by
        `_catch_up`), at most once a second; a restart folds only what follows it."""
        now = time.monotonic()
        latest = self._tail.latest
        if latest <= self._watermark_written or now - self._watermark_at < 1.0:
            return
        self._watermark_at = now

        def higher(current: bytes | None) -> bytes | None:
            return None if int(current or b"0") >= latest else str(latest).encode()

        await self._set_if(_REGISTRY_THROUGH_KEY, higher)
        self._watermark_written = latest

    async def _set_if(self, key: str, new_value: Callable[[bytes | None], bytes | None]) -> bytes:
        """Compare-and-set of one bucket key: writes `new_value(current)` unless it is
        None, again if another writer got there between the read and the write; returns
        the value the key holds after."""
        for _ in range(_MAX_CONFLICT_RETRIES):
            try:
                current = await self._nats.accounts.get(key)
            except nats.js.errors.KeyNotFoundError:
                current = None
            held = current.value if current is not None else None
            value = new_value(held)
            if value is None:
                return held or b""
            try:
                if current is None:
                    await self._nats.accounts.create(key, value)
                else:
                    await self._nats.accounts.update(key, value, last=current.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # written meanwhile: compare again
            return value
        raise EventLogUnavailable(f"the registry's key {key} kept changing")

    async def _fold_since_watermark(self, last_seq: int) -> None:
        """At open: folds into the registry the events after the watermark (those whose
        appender may have died before writing their entries, with every replica down)."""
        try:
            value = (await self._nats.accounts.get(_REGISTRY_THROUGH_KEY)).value
            after = int(value or b"0")
        except nats.js.errors.KeyNotFoundError:
            after = 0
        after = max(after, self._pruned_through)
        while after < last_seq:
            events = await self._fetch(after, 1024)
            if not events:
                break
            await self._fold_into_registry(events)
            after = events[-1].cursor

    async def _fetch(self, after: int, limit: int) -> list[StoredEvent]:
        """Up to `limit` events after `after` (which must exist)."""
        messages = await self._fetch_from(self._options.stream, self._wildcard, after + 1, limit)
        return [_stored(message) for message in messages]

    async def _fetch_from(self, stream: str, subjects: str, start: int, limit: int) -> list[Msg]:
        """Up to `limit` messages of `stream` from sequence `start`, through a short-lived
        pull consumer that hands over whatever is stored, without waiting for more."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            inactive_threshold=5.0,
        )
        subscription = await self._nats.js.pull_subscribe(
            subjects, durable=None, stream=stream, config=config
        )
        try:
            return await subscription.fetch(limit, timeout=self._options.request_timeout)
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await subscription.unsubscribe()

    def _appended_here(self, record: EventRecord, cursor: int, recorded_at: float) -> None:
        """Our own append goes straight into the tail when nothing came in between."""
        if cursor <= self._tail.latest:
            return  # the follower read it first, and folded it into the registry
        if cursor != self._tail.latest + 1:
            self._registered_here.add(cursor)  # its registry entry is written: not again
            self._poke.set()  # another replica's events are between: the follower reads them
            return
        self._tail.publish([record.stored(cursor, recorded_at)])


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


@dataclass(frozen=True, slots=True)
class _Appended:
    """One record's outcome, and the highest inbox sequence known to be covered by an
    event once it was handled (the record's own `inbox_through` when it was recorded)."""

    outcome: AppendOutcome
    covered_through: int

    @classmethod
    def duplicate(cls, record: EventRecord, cursor: int, covered_through: int) -> _Appended:
        return cls(AppendOutcome(record.event_id, cursor, duplicate=True), covered_through)


@dataclass(frozen=True, slots=True)
class _Recorded:
    """An ids-bucket value: the event's cursor (0: its change was known already) and the
    inbox sequence the recording covered (0 when not from the inbox)."""

    cursor: int
    inbox_through: int

    @classmethod
    def parse(cls, value: bytes) -> _Recorded:
        cursor, _, through = value.decode().partition(" ")
        return cls(int(cursor or 0), int(through or 0))


@dataclass(frozen=True, slots=True)
class _LastEvent:
    """The last event of an account: its sequence, state, id and inbox position."""

    sequence: int
    known: KnownAccount | None
    event_id: str
    inbox_through: int
    entry: RegisteredAccount | None  # the registry entry it left


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Waits for `event` at most `timeout` seconds. A timer rather than asyncio.timeout:
    on Python 3.11 a cancel arriving as the timeout expires can be swallowed, and
    close() would wait for the task forever."""
    timer = asyncio.get_running_loop().call_later(timeout, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


# --- The headers' codec: what a message says besides its body, written and read here ---


def _event_headers(record: EventRecord, recorded_at: float, inbox_through: int) -> dict[str, str]:
    """An event message's index columns, as JSON in one header, so reads need not parse
    the body (`_stored_event` and `_last_on` read them back)."""
    fields = {
        "event_id": record.event_id,
        "type": record.type,
        "account_id": record.account_id,
        "provider": record.provider,
        "origin_owner_id": record.origin_owner_id,
        "recorded_at": recorded_at,
        "status": record.account_status,
        "updated_at": record.account_updated_at,
        "source": record.source,
        "inbox_through": inbox_through,
    }
    return {_HEADER: orjson.dumps(fields).decode()}


def _inbox_headers(entry: InboxEntry) -> dict[str, str]:
    """An inbox message's columns and its parsed webhook (`_inbox_entry` reads them back;
    the body stays the raw webhook), and its trace context under W3C's own header name,
    which NATS tooling shows as such."""
    fields: dict[str, object] = {
        "event_id": entry.event_id,
        "type": entry.type,
        "account_id": entry.account_id,
        "received_at": entry.received_at,
    }
    if (details := entry.stored_details()) is not None:
        fields["webhook"] = details
    headers = {_INBOX_HEADER: orjson.dumps(fields).decode()}
    if entry.traceparent:
        headers[_TRACEPARENT_HEADER] = entry.traceparent
    return headers


def _fields(headers: Mapping[str, object] | None, name: str) -> dict[str, Any]:
    """Our JSON header `name`. nats-py's get of a stream message parses headers as e-mail,
    which hands back a value with non-ASCII bytes (an id such as 'café') as an
    `email.header.Header`; `decode_header` gives back its bytes."""
    value = (headers or {})[name]
    if isinstance(value, Header):
        value = b"".join(p if isinstance(p, bytes) else p.encode() for p, _ in decode_header(value))
    fields: dict[str, Any] = orjson.loads(value if isinstance(value, bytes) else str(value))
    return fields


def _inbox_entry(seq: int, headers: Mapping[str, object] | None, body: bytes) -> InboxEntry:
    """An inbox message as `_inbox_headers` wrote it; one an earlier release wrote has
    no parsed webhook, only its raw body (see `InboxEntry.from_raw_body_only`)."""
    fields = _fields(headers, _INBOX_HEADER)
    details = fields.get("webhook")
    return InboxEntry(
        seq,
        Webhook.stored(fields["event_id"], fields["type"], fields["account_id"], details),
        float(fields["received_at"]),
        body,
        str((headers or {}).get(_TRACEPARENT_HEADER, "")),
        from_raw_body_only=details is None,
    )


def _state_of(event: StoredEvent) -> tuple[KnownAccount, RegisteredAccount]:
    """What an accounts-bucket value holds once `event` is the account's last."""
    try:
        message = pb.AccountEvent.FromString(event.body)
    except DecodeError:
        message = pb.AccountEvent()
    account = message.account
    known = KnownAccount(
        event.account_id,
        account.raw_status,
        account.updated_at.ToJsonString() if account.HasField("updated_at") else "",
        deletes_account(event.type),
        event_source(message.source),
    )
    return known, registered(event)


def _registry_value(known: KnownAccount, entry: RegisteredAccount) -> bytes:
    """An accounts-bucket value: what reconciliation compares, and the registry entry."""
    return orjson.dumps(
        {
            "known": known,
            "cursor": entry.cursor,
            "account": base64.b64encode(entry.account).decode(),
            "provider": entry.provider,
            "origin_owner_id": entry.origin_owner_id,
            "recorded_at": entry.recorded_at,
        }
    )


def _from_registry_value(value: bytes) -> tuple[KnownAccount, RegisteredAccount]:
    """The two halves of an accounts-bucket value (one written before the registry holds
    only the first: its entry then has no account and cursor 0)."""
    state = orjson.loads(value)
    known = KnownAccount(**state.get("known", state))
    entry = RegisteredAccount(
        known.account_id,
        int(state.get("cursor", 0)),
        known.deleted,
        base64.b64decode(state.get("account", "")),
        state.get("provider", ""),
        state.get("origin_owner_id", ""),
        known.status,
        float(state.get("recorded_at", 0.0)),
    )
    return known, entry


def _stored(message: Msg) -> StoredEvent:
    fields = _fields(message.headers, _HEADER)
    return _stored_event(fields, message.metadata.sequence.stream, message.data)


def _stored_event(fields: Mapping[str, Any], cursor: int, body: bytes) -> StoredEvent:
    """The event a message's header fields and body describe, at `cursor`."""
    return StoredEvent(
        cursor,
        fields["event_id"],
        fields["type"],
        fields["account_id"],
        fields["provider"],
        fields["origin_owner_id"],
        fields["recorded_at"],
        body,
    )


async def _ensure_all(
    js: JetStreamContext, options: JetStreamOptions, *, events_after: int, inbox_after: int
) -> tuple[list[str], KeyValue, KeyValue]:
    """Creates or updates the streams and buckets; the names of the streams that had to
    be created, and the accounts and ids buckets. A stream created anew starts after the
    sequence given for it (0 at first)."""
    created = [
        name
        for name, missing in [
            (options.stream, await _ensure_stream(js, options, after=events_after)),
            (options.inbox_stream, await _ensure_inbox(js, options, after=inbox_after)),
        ]
        if missing
    ]
    accounts, ids = await _ensure_buckets(js, options)
    return created, accounts, ids


def _stream_config(
    options: JetStreamOptions, name: str, subject_prefix: str, **limits: Any
) -> StreamConfig:
    """A stream of ours: its subjects under `subject_prefix`, on the configured storage and
    replicas, with its own `limits` (StreamConfig's fields)."""
    return StreamConfig(
        name=name,
        subjects=[f"{subject_prefix}.>"],
        storage=_storage(options.storage),
        num_replicas=options.replicas,
        **limits,
    )


async def _ensure_inbox(js: JetStreamContext, options: JetStreamOptions, *, after: int) -> bool:
    """Creates the inbox stream, or updates it to the configured limit; True if created."""
    config = _stream_config(
        options,
        options.inbox_stream,
        options.inbox_prefix,
        max_msgs=options.inbox_limit,
        discard=DiscardPolicy.NEW,
        duplicate_window=options.inbox_duplicate_window,
    )
    return await _create_or_update(js, options.inbox_stream, config, after=after)


async def _create_or_update(
    js: JetStreamContext, name: str, config: StreamConfig, *, after: int
) -> bool:
    """Creates the stream `name` with `config` (its first sequence after `after`), or
    brings an existing one to it; True if it was created."""
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(replace(config, first_seq=after + 1 if after else None))
        except nats.js.errors.BadRequestError:
            return False  # another replica created it just now
        return True
    await js.update_stream(config)
    return False


async def _ensure_buckets(
    js: JetStreamContext, options: JetStreamOptions
) -> tuple[KeyValue, KeyValue]:
    """The accounts and ids buckets, created or bound."""
    accounts = await js.create_key_value(
        KeyValueConfig(
            bucket=f"{options.stream}_ACCOUNTS",
            storage=_storage(options.storage),
            replicas=options.replicas,
        )
    )
    ids = await js.create_key_value(
        KeyValueConfig(
            bucket=f"{options.stream}_IDS",
            ttl=options.retention.dedup_window,
            storage=_storage(options.storage),
            replicas=options.replicas,
        )
    )
    return accounts, ids


def _storage(name: str) -> StorageType:
    return StorageType.MEMORY if name == "memory" else StorageType.FILE


async def _ensure_stream(js: JetStreamContext, options: JetStreamOptions, *, after: int) -> bool:
    """Creates the stream, or updates it to the configured limits; True if created."""
    retention = options.retention
    if retention.dedup_window > retention.max_age:
        _log.warning(
            "JetStream caps the duplicate window at the stream's max age: redeliveries are "
            "recognised for %gs, not %gs",
            retention.max_age,
            retention.dedup_window,
        )
    config = _stream_config(
        options,
        options.stream,
        options.subject_prefix,
        max_age=retention.max_age,
        max_msgs=retention.max_count or -1,
        duplicate_window=min(retention.dedup_window, retention.max_age),
    )
    return await _create_or_update(js, options.stream, config, after=after)


BACKEND = Backend(
    example="nats://host:port",
    accepts=lambda url: bool(url.hostname),
)
