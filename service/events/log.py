"""The roles of an event log (what each part of the service uses of it), the whole that
every backend implements, and how a backend is described."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import ParseResult

from service.events.cursors import Incarnation
from service.events.model import (
    Accepted,
    AppendOutcome,
    EventRecord,
    InboxEntry,
    InboxStats,
    KnownAccount,
    LogBounds,
    Settlement,
    StoredEvent,
)
from service.events.registry import RegistryPage, RegistryQuery
from service.events.subscriptions import Attempt, Progress, Settled, SubscriptionRecord

# Called with the name of a background task after each failure the log survives (logged,
# retried at its next interval), for a metric.
ReportFailure = Callable[[str], None]


def ignore_failure(task: str) -> None:
    """A `ReportFailure` for a log whose failures nobody counts."""


# The roles below are what the parts of the service use of a log; each consumer is typed
# with the role it uses (tests/repository/test_layers.py holds it), so a backend's reach into the
# service is visible, and a part can be given a narrower log.


class Log(Protocol):
    """A durable, ordered, de-duplicating log of account events.

    Appends are durable when `append` returns. Cursors increase monotonically and are
    never reused. A record whose `event_id` was already appended (within the dedup
    window) is not appended again: its outcome reports the original cursor.
    """

    async def append(self, records: Sequence[EventRecord]) -> list[AppendOutcome]:
        """Durably appends records in order; raises `EventLogUnavailable` on failure."""
        ...

    async def read(self, after: int, limit: int) -> list[StoredEvent]:
        """Returns up to `limit` events with cursors greater than `after`, in order."""
        ...

    @property
    def latest_cursor(self) -> int:
        """The newest cursor this process has seen (for metrics; may trail other replicas)."""
        ...

    @property
    def incarnation(self) -> Incarnation:
        """This log's incarnation: the tag its cursors carry, and which cursors of the
        logs it replaced still name its events (see `service.events.cursors`)."""
        ...

    async def bounds(self, *, exact: bool = False) -> LogBounds:
        """Returns the pruned-through and latest cursors.

        Cheap by default (what this process has seen); `exact` asks the storage, for a
        decision that must not trail other replicas, such as whether a cursor is valid.
        """
        ...

    def wait_for_append(self, after: int, timeout: float) -> Awaitable[None]:
        """Done once the latest cursor exceeds `after`, or after `timeout` seconds (an
        awaitable, so that a backend can hand out a bare future: thousands of streams
        wait on it)."""
        ...

    def stop_waits(self) -> None:
        """Ends every current and later `wait_for_append` at once (the server is draining)."""
        ...


class Inbox(Protocol):
    """Webhooks accepted at the door, waiting for verification: the ingestor adds them,
    the verifier reads them and settles each as recorded events."""

    async def accept(self, entry: InboxEntry, alone: EventRecord | None = None) -> Accepted:
        """Durably adds a webhook to the inbox (QUEUED), or reports a redelivery of one
        pending or recorded (DUPLICATE). `entry.seq` is ignored: the inbox assigns it.

        `alone` is the event that records this webhook by itself, for a type that needs
        no look-up: when no entry of the account is pending, a backend may append it in
        the same transaction instead (RECORDED), which is what the verifier would have
        recorded, one durable write and one hop sooner. Raises `InboxFull` at the inbox
        limit and `EventLogUnavailable` on storage failure."""
        ...

    async def pending(self, after: int, limit: int) -> list[InboxEntry]:
        """Up to `limit` inbox entries with a sequence above `after`, oldest first."""
        ...

    async def unsettled(self, entries: Sequence[InboxEntry]) -> list[InboxEntry]:
        """The entries (of one account) not yet recorded by any verifier."""
        ...

    async def settle(
        self, entries: Sequence[InboxEntry], records: Sequence[EventRecord]
    ) -> Settlement:
        """Appends the events that record `entries` (all of one account), then clears the
        entries those events cover; after a crash in between, settling them again records
        nothing twice. An entry is cleared only once an event covering it is recorded:
        when another replica recorded part of a group first, the rest stays in the inbox
        and is returned as `unrecorded`, to be read again and recorded."""
        ...

    async def wait_for_inbox(self, after: int, timeout: float) -> None:
        """Returns once an inbox entry past sequence `after` may exist, or after `timeout`."""
        ...

    async def inbox_stats(self) -> InboxStats:
        """How many webhooks wait for verification, and since when."""
        ...


class AccountRegistry(Protocol):
    """Each account as its last recorded event left it, kept by the log with its events."""

    async def known_accounts(self) -> dict[str, KnownAccount]:
        """The last recorded state of every account the log has seen an event for."""
        ...

    async def registry(self, query: RegistryQuery) -> RegistryPage:
        """Registry entries (each account as its last recorded event left it) that the
        query admits, in account id order, with the cursor they reflect."""
        ...

    async def mark_registry_complete(self) -> None:
        """Records that a full listing of StackOne has been folded into the registry."""
        ...


@dataclass(frozen=True, slots=True)
class RequestClaim:
    """What a retryable call's request id holds: a claim this call now owns (`mine`), or
    another call's (in flight while `answer` is None, else its serialized answer), with
    the fingerprint of the request that made it."""

    fingerprint: str
    mine: bool = False
    answer: bytes | None = None


class RequestRecords(Protocol):
    """The first answer of each retryable call (AIP-155 request ids), kept in the log's
    storage for a window so that every replica sees it. Keys are opaque (a hash of the
    client, method and request id); claims are compare-and-set, so two calls racing on one
    key make one StackOne call. A claim with no answer after the lease is taken over (its
    replica died mid-call)."""

    async def claim(self, key: str, fingerprint: str) -> RequestClaim:
        """Claims `key` for this call, or returns the claim another call holds on it."""
        ...

    async def answer(self, key: str, fingerprint: str, answer: bytes) -> None:
        """Records the answer of the call that holds the claim on `key`."""
        ...

    async def release(self, key: str) -> None:
        """Drops this call's claim on `key` (it failed: a retry may try again)."""
        ...

    async def close(self) -> None:
        """Releases what the records hold apart from the log (a connection)."""
        ...


class Subscriptions(Protocol):
    """Subscriptions the service keeps (`service.subscriptions`): their settings, committed
    positions, attempts of outstanding events and parked events, as durable as the log."""

    async def create(self, record: SubscriptionRecord, position: int) -> SubscriptionRecord:
        """Stores a new subscription at `position`; raises `SubscriptionExists`."""
        ...

    async def all(self) -> list[SubscriptionRecord]:
        """Every subscription of every client."""
        ...

    async def update(self, subscription: int, ack_deadline: float, max_deliveries: int) -> None:
        """Sets a subscription's delivery settings."""
        ...

    async def delete(self, subscription: int) -> None:
        """Removes a subscription and everything kept for it."""
        ...

    async def progress(self, subscription: int) -> Progress:
        """What a dispatcher resumes from."""
        ...

    async def record_attempts(self, subscription: int, attempts: Sequence[Attempt]) -> None:
        """Records deliveries about to be sent."""
        ...

    async def record_settled(self, subscription: int, settled: Settled) -> None:
        """Records acks and parkings, and the position they let the subscription reach."""
        ...

    async def seek(self, subscription: int, position: int) -> None:
        """Moves the subscription, forgetting its acks and attempts (parked ones stay)."""
        ...

    async def redrive(self, subscription: int) -> None:
        """Marks the parked events to be delivered again."""
        ...


class LogAndRegistry(Log, AccountRegistry, Protocol):
    """The log and the registry it keeps: for a part that records events from what it
    reads of the registry (reconciliation), or serves both (the servicer)."""


class Lifecycle(Protocol):
    """What the process that owns a log does with it: probe, prune, close."""

    async def check_writable(self) -> None:
        """Raises `EventLogUnavailable` unless an append could succeed now."""
        ...

    async def enforce_retention(self, now: float | None = None) -> int:
        """Applies the retention policy now; returns the new pruned-through cursor."""
        ...

    async def close(self) -> None:
        """Flushes and releases the storage."""
        ...


class EventLog(Log, Inbox, AccountRegistry, Lifecycle, Protocol):
    """Every role at once: what a backend implements, and what the wiring holds (the
    composition root opens one and hands each part its role)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One kind of event log, as `service.events.backends` offers it for a URL scheme.

    Attributes:
        example: a URL naming this backend, shown when a URL is refused.
        accepts: whether a URL of its scheme says enough to open it (a path, a host).
    """

    example: str
    accepts: Callable[[ParseResult], bool]
