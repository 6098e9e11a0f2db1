"""Plain data the event log stores and hands out, and the rules every backend shares."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, StrEnum

from service.events.cursors import Incarnation
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


class EventSource(StrEnum):
    """What an event was recorded from: the one place the sources are named (the
    registry and the JetStream headers store these values)."""

    WEBHOOK = "webhook"
    RECONCILIATION = "reconciliation"


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
    source: EventSource = EventSource.WEBHOOK
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
    if record.source == EventSource.RECONCILIATION or record.repeat:
        return same_state
    return same_state and known.source == EventSource.RECONCILIATION


@dataclass(frozen=True, slots=True)
class Webhook:
    """A StackOne webhook as the gateway parsed it, once: the fields its event carries.

    It travels inward with its inbox entry, so nothing below the gateway reads the raw
    body again. `event_id` is StackOne's id, or a digest of the content where it sent none.
    """

    event_id: str
    type: str
    account_id: str
    provider: str = ""
    origin_owner_id: str = ""
    origin_owner_name: str = ""
    origin_username: str = ""
    occurred_at: datetime | None = None

    @property
    def is_account_event(self) -> bool:
        """True for `account.*` events, the only ones recorded."""
        return self.type.startswith("account.")

    def details(self) -> dict[str, str]:
        """What the inbox stores beside its id, type and account id columns (read back
        by `stored`); the one form both backends keep it in."""
        return {
            "provider": self.provider,
            "origin_owner_id": self.origin_owner_id,
            "origin_owner_name": self.origin_owner_name,
            "origin_username": self.origin_username,
            "occurred_at": self.occurred_at.isoformat() if self.occurred_at else "",
        }

    @classmethod
    def stored(
        cls, event_id: str, type: str, account_id: str, details: Mapping[str, str] | None
    ) -> Webhook:
        """A webhook as an inbox stored it: its id, type and account id columns and the
        fields `details` wrote (as stored, not parsed again); None for an entry of an
        earlier release, which stored only the raw body."""
        if details is None:
            return cls(event_id, type, account_id)
        occurred_at = details.get("occurred_at", "")
        return cls(
            event_id,
            type,
            account_id,
            details.get("provider", ""),
            details.get("origin_owner_id", ""),
            details.get("origin_owner_name", ""),
            details.get("origin_username", ""),
            datetime.fromisoformat(occurred_at) if occurred_at else None,
        )


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A webhook accepted at the door, waiting in the inbox for verification.

    `seq` orders the inbox (arrival order, never reused); `webhook` is the parsed
    webhook, `body` the raw one as signed (kept for audit and backups, never parsed
    again); `traceparent` the W3C trace context of its receipt ('' with tracing off), so
    that the verifier's spans link to it. `from_raw_body_only` marks an entry written by
    a release that stored only the raw body: its `webhook` has only the id, type and
    account id until the upgrade path (`gateway.webhook.upgraded`) parses the body.
    """

    seq: int
    webhook: Webhook
    received_at: float
    body: bytes
    traceparent: str = ""
    from_raw_body_only: bool = False

    @property
    def event_id(self) -> str:
        """The id the inbox and the log know this webhook by."""
        return self.webhook.event_id

    @property
    def type(self) -> str:
        """The webhook's event type."""
        return self.webhook.type

    @property
    def account_id(self) -> str:
        """The account the webhook is about."""
        return self.webhook.account_id

    def stored_details(self) -> dict[str, str] | None:
        """The parsed webhook's fields as the inbox stores them; None for an entry with
        only its raw body, stored as an earlier release stored it."""
        return None if self.from_raw_body_only else self.webhook.details()


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

    @property
    def follows_state(self) -> bool:
        """True when an account's events can take it out of the filter: it selects by
        provider or owner, which an event may change (never an account id or a type)."""
        return bool(self.providers or self.origin_owner_ids or self.owners is not None)

    def matches(self, event: StoredEvent) -> bool:
        """True when `event` passes every non-empty part of the filter."""
        return self.matched(event, event.provider, event.origin_owner_id)

    def matched(self, event: StoredEvent, provider: str, origin_owner_id: str) -> bool:
        """True when `event` would pass if its account had this provider and owner (those
        before it: the account was in the filter's view until `event`)."""
        return (
            (not self.providers or provider in self.providers)
            and (not self.origin_owner_ids or origin_owner_id in self.origin_owner_ids)
            and (not self.account_ids or event.account_id in self.account_ids)
            and (not self.event_types or event.type in self.event_types)
            and (self.owners is None or self.owners.allows(origin_owner_id))
        )


class EventLogError(Exception):
    """The event log cannot do what was asked."""


class EventLogUnavailable(EventLogError):
    """The log's storage failed; nothing was recorded by the failed call."""


class InboxFull(EventLogError):
    """The inbox holds its limit of unverified webhooks; StackOne should retry later."""


class CursorOutOfRange(EventLogError):
    """A cursor points before what retention keeps, past the end of the log, or into
    another incarnation of it (a log since restored from a backup or replaced).

    `earliest` and `latest` are the cursors a client may resume after, as clients see
    them (with the log's incarnation when one is given)."""

    def __init__(
        self, cursor: int, bounds: LogBounds, incarnation: Incarnation | None = None
    ) -> None:
        public = str if incarnation is None else incarnation.public
        self.bounds = bounds
        self.earliest = public(bounds.pruned_through)
        self.latest = public(bounds.latest)
        if cursor > bounds.latest:
            reason = (
                f"cursor {public(cursor)} is ahead of the log, whose latest cursor is {self.latest}"
            )
        else:
            reason = (
                f"cursor {public(cursor)} is older than the retained events; the earliest "
                f"valid cursor is {self.earliest} (or start from the earliest retained event)"
            )
        super().__init__(reason)

    @classmethod
    def of_another_log(
        cls, cursor: str, bounds: LogBounds, incarnation: Incarnation
    ) -> CursorOutOfRange:
        """For `cursor`, of a log this one replaced: what it named may not be here."""
        error = cls(bounds.latest, bounds, incarnation)
        error.args = (
            f"cursor {cursor} is from another incarnation of the event log (it was since "
            "restored from a backup or replaced), so resuming after it could skip events: "
            "resync from a snapshot (from_snapshot), then follow from the bookmark that ends it",
        )
        return error


class NotInRegistry(EventLogError):
    """The complete registry holds no live account with this id."""

    def __init__(self, account_id: str) -> None:
        # The lookup reads the account's newest entry, not the registry as of one cursor.
        super().__init__(
            f"account {account_id!r} is not in the registry: no event recorded it, or the "
            "last one deleted it (read_from READ_FROM_STACKONE asks StackOne itself)"
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

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor  # as clients see it
        super().__init__(
            f"the server is shutting down; reconnect with after_cursor={cursor} to resume"
        )
