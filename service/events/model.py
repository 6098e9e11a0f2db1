"""Plain data the event log stores and hands out, and the rules every backend shares."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from service.owners import OwnerScope


class AccountEventType(StrEnum):
    """The account events StackOne sends and this service records and synthesizes: the
    one place they are named (the gateway's metric labels, the verifier, reconciliation
    and the emulator use these)."""

    CREATED = "account.created"
    UPDATED = "account.updated"
    DELETED = "account.deleted"

    @property
    def reports_state(self) -> bool:
        """True for the types whose webhook reports the account's state, which a look-up
        at StackOne verifies (a deletion has no state left to look up)."""
        return self is not AccountEventType.DELETED


ACCOUNT_CREATED = AccountEventType.CREATED
ACCOUNT_DELETED = AccountEventType.DELETED
STATE_TYPES = frozenset(t.value for t in AccountEventType if t.reports_state)
"""The types a look-up verifies and folds: created and updated."""
ACCOUNT_EVENT_TYPE = re.compile(r"account\.[a-z_]{1,64}")
"""What an account event's type is: what the gateway records and a stream filter selects
(`account.error` and other alerts StackOne may add included)."""


def deletes_account(event_type: str) -> bool:
    """True for the event after which the account no longer exists in StackOne."""
    return event_type == ACCOUNT_DELETED


@dataclass(frozen=True, slots=True)
class Retention:
    """How long events and dedup keys are kept (SQLite sweeps; JetStream enforces itself).

    Attributes:
        max_age: seconds an event is kept.
        max_count: most events kept; None keeps any number.
        dedup_window: seconds an event id is remembered for de-duplication.
        sweep_interval: seconds between retention sweeps, where the backend sweeps.
    """

    max_age: float = 7 * 24 * 3600.0
    max_count: int | None = None
    dedup_window: float = 7 * 24 * 3600.0
    sweep_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event to append: its index columns plus the serialized `AccountEvent`."""

    event_id: str
    type: str
    account_id: str
    provider: str
    origin_owner_id: str
    body: bytes
    account_status: str = ""
    account_updated_at: str = ""
    source: str = "webhook"
    # The webhook ids this event records (its own first); each is a duplicate afterwards.
    covered_ids: tuple[str, ...] = ()
    # The highest inbox sequence this event settles (0: none), so that a verifier that
    # crashed after recording, before clearing its inbox entries, never records them again.
    inbox_through: int = 0
    # It records only webhooks whose content repeated a recorded one's: it is a change
    # only if the account's state differs from the last recorded (see `already_known`).
    repeat: bool = False

    @property
    def ids(self) -> tuple[str, ...]:
        """Every id that marks this event as recorded."""
        return self.covered_ids or (self.event_id,)

    def stored(self, cursor: int, recorded_at: float) -> StoredEvent:
        """The event as the log hands it out once recorded at `cursor`."""
        return StoredEvent(
            cursor,
            self.event_id,
            self.type,
            self.account_id,
            self.provider,
            self.origin_owner_id,
            recorded_at,
            self.body,
        )


@dataclass(frozen=True, slots=True)
class KnownAccount:
    """The last state of an account that the log recorded an event for.

    Reconciliation compares StackOne's account list with these to find changes that no
    webhook delivered.
    """

    account_id: str
    status: str
    updated_at: str
    deleted: bool
    source: str

    @classmethod
    def recorded(cls, record: EventRecord) -> KnownAccount:
        """The account's state once `record` is recorded."""
        return cls(
            record.account_id,
            record.account_status,
            record.account_updated_at,
            deletes_account(record.type),
            record.source,
        )


def already_known(record: EventRecord, known: KnownAccount | None) -> bool:
    """True when the log already holds the change `record` reports.

    A webhook and a reconciliation sweep can both see the same change; whichever is
    recorded second must not announce it again. Backends apply this in the same
    transaction as the append, so the check and the write cannot interleave.
    """
    if known is None:
        return False
    if record.type == ACCOUNT_CREATED:
        return not known.deleted
    if deletes_account(record.type):
        return known.deleted
    same_state = bool(record.account_updated_at) and (known.status, known.updated_at) == (
        record.account_status,
        record.account_updated_at,
    )
    if record.source == "reconciliation" or record.repeat:
        return same_state
    return same_state and known.source == "reconciliation"


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A webhook accepted at the door, waiting in the inbox for verification.

    `seq` orders the inbox (arrival order, never reused); `body` is the raw webhook;
    `traceparent` the W3C trace context of its receipt ('' with tracing off), so that the
    verifier's spans link to it.
    """

    seq: int
    event_id: str
    type: str
    account_id: str
    received_at: float
    body: bytes
    traceparent: str = ""


class Accepted(Enum):
    """What `EventLog.accept` did with a webhook."""

    QUEUED = "queued"  # in the inbox, for the verifier
    RECORDED = "recorded"  # its event recorded in the same transaction (no look-up needed)
    DUPLICATE = "duplicate"  # a redelivery of a webhook still pending
    REPEATED = "repeated"  # its id was recorded before (a redelivery, or the same content again)


@dataclass(frozen=True, slots=True)
class InboxStats:
    """How much waits in the inbox: entries and the arrival time of the oldest."""

    depth: int
    oldest_received_at: float | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as recorded, with its position in the log."""

    cursor: int
    event_id: str
    type: str
    account_id: str
    provider: str
    origin_owner_id: str
    recorded_at: float
    body: bytes


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What happened to one appended record.

    `duplicate` is True for a record not appended because its event id was seen (then
    `cursor` is the first one's) or because the log already holds its change (cursor 0).
    """

    event_id: str
    cursor: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Settlement:
    """What `EventLog.settle` did: each record's outcome, and the entries it left in the
    inbox because another replica had recorded only part of what they fold with (they
    are to be read again with `EventLog.unsettled` and recorded in a later event)."""

    outcomes: list[AppendOutcome]
    unrecorded: list[InboxEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LogBounds:
    """Which cursors a reader may resume after.

    `pruned_through` is the highest cursor retention has removed (0 when nothing was):
    resuming after any cursor below it would silently skip events.
    """

    pruned_through: int
    latest: int


@dataclass(frozen=True, slots=True)
class Bookmark:
    """The position a stream has read up to, sent when it has nothing else to say."""

    cursor: int


def _empty() -> frozenset[str]:
    return frozenset()


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Server-side filter: kinds combine with AND, values of one kind with OR.

    `owners` is the calling client's scope, not the subscriber's choice: part of the
    filter, it also keeps streams of different scopes from sharing encoded frames.
    """

    providers: frozenset[str] = field(default_factory=_empty)
    origin_owner_ids: frozenset[str] = field(default_factory=_empty)
    account_ids: frozenset[str] = field(default_factory=_empty)
    event_types: frozenset[str] = field(default_factory=_empty)
    owners: OwnerScope | None = None

    @classmethod
    def of(
        cls,
        *,
        providers: Collection[str] = (),
        origin_owner_ids: Collection[str] = (),
        account_ids: Collection[str] = (),
        event_types: Collection[str] = (),
    ) -> EventFilter:
        """Builds a filter from any collections of values."""
        return cls(
            frozenset(providers),
            frozenset(origin_owner_ids),
            frozenset(account_ids),
            frozenset(event_types),
        )

    @property
    def is_empty(self) -> bool:
        """True when the filter matches every event."""
        return not (
            self.providers
            or self.origin_owner_ids
            or self.account_ids
            or self.event_types
            or self.owners is not None
        )

    def matches(self, event: StoredEvent) -> bool:
        """True when `event` passes every non-empty part of the filter."""
        return (
            (not self.providers or event.provider in self.providers)
            and (not self.origin_owner_ids or event.origin_owner_id in self.origin_owner_ids)
            and (not self.account_ids or event.account_id in self.account_ids)
            and (not self.event_types or event.type in self.event_types)
            and (self.owners is None or self.owners.allows(event.origin_owner_id))
        )


class EventLogError(Exception):
    """The event log cannot do what was asked."""


class EventLogUnavailable(EventLogError):
    """The log's storage failed; nothing was recorded by the failed call."""


class InboxFull(EventLogError):
    """The inbox holds its limit of unverified webhooks; StackOne should retry later."""


class CursorOutOfRange(EventLogError):
    """A cursor points before what retention keeps, or past the end of the log."""

    def __init__(self, cursor: int, bounds: LogBounds) -> None:
        self.cursor = cursor
        self.bounds = bounds
        if cursor > bounds.latest:
            reason = f"cursor {cursor} is ahead of the log, whose latest cursor is {bounds.latest}"
        else:
            reason = (
                f"cursor {cursor} is older than the retained events; the earliest valid "
                f"cursor is {bounds.pruned_through} (or start from the earliest retained event)"
            )
        super().__init__(reason)


class NotInRegistry(EventLogError):
    """The complete registry holds no live account with this id."""

    def __init__(self, account_id: str, cursor: int) -> None:
        super().__init__(
            f"account {account_id!r} is not in the registry as of cursor {cursor}: no event "
            "recorded it, or the last one deleted it (read_from READ_FROM_STACKONE asks "
            "StackOne itself)"
        )


class RegistryIncomplete(EventLogError):
    """No full listing of StackOne has been folded into the registry yet."""

    def __init__(self) -> None:
        super().__init__(
            "the account registry is not complete yet: reconciliation has not folded in a "
            "full listing of StackOne's accounts since it was created; retry in a few minutes "
            "(stackone_connect_registry_complete says when), or read from StackOne"
        )


class TooManyStreams(Exception):
    """The server holds its maximum of open event streams; a new one is refused."""

    def __init__(self, limit: int, setting: str) -> None:
        self.limit = limit
        self.setting = setting
        super().__init__(
            f"this server already has its maximum of {limit} event streams open ({setting}): "
            "retry with backoff, close streams you no longer need (one stream can follow "
            "many accounts), or connect to another replica"
        )


class ServerDraining(EventLogError):
    """The server is shutting down; the stream should reconnect (to another replica)."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        super().__init__(
            f"the server is shutting down; reconnect with after_cursor={cursor} to resume"
        )
