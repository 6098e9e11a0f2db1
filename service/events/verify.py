"""The verifier: turns the inbox of accepted webhooks into recorded account events.

The gateway only puts webhooks in the inbox; this background stage does the rest, off
the webhook's path:

- per account, in arrival order: an account's entries are handled by one task at a time,
  so its events are recorded in the order StackOne sent them;
- one `GET /accounts/{id}` for every `created`/`updated` webhook of an account that is
  pending together, which fold into one event listing the webhook ids it covers;
- within a deadline counted from receipt: when StackOne (or the rate budget) cannot
  answer in time, the event is recorded unverified, with the reason;
- crash-safe: the events are appended and the entries cleared by `Inbox.settle`, which
  never records an entry twice even if the process died between the two.

Types that need no look-up (`account.deleted`, other `account.*` alerts) go through the
same ordered path. A `created`/`updated` group followed by another type in the same
pending set is not looked up: StackOne's answer would describe the account after that
later change, so it is recorded unverified as superseded.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.context import Context
from opentelemetry.trace import Span

from service.aio import cancel_all
from service.api.convert import account_message
from service.events.ingest import is_repeat
from service.events.log import Inbox
from service.events.model import STATE_TYPES, EventLogUnavailable, EventRecord, InboxEntry
from service.events.records import event_record, webhook_event
from service.metrics import Metrics
from service.retry import RetryPolicy
from service.stackone.budget import Priority
from service.stackone.client import StackOneClient
from service.stackone.errors import (
    StackOneAuthError,
    StackOneBadRequest,
    StackOneError,
    StackOneNotFound,
)
from service.tracing import OFF, Tracing, current_traceparent, links_to, parent_of
from stackone_connect.v1 import stackone_connect_pb2 as pb

_log = logging.getLogger(__name__)
VERIFIED_TYPES = STATE_TYPES
# Answers that retrying within the deadline cannot change.
_FINAL_ERRORS = (StackOneNotFound, StackOneAuthError, StackOneBadRequest)
_PAGE = 500
# Rounds of recording what other replicas left of an account's entries before retrying.
_SETTLE_ROUNDS = 5
LOOKUP_ATTEMPTS = 8
"""HTTP requests one look-up makes at most (`lookup_policy`)."""


def lookup_policy(deadline: float) -> RetryPolicy:
    """A look-up's attempts: their waits double from 1/256 of the verification deadline,
    so the 8 attempts span about half of it (0.23 s, 0.47 s, … 15 s for the default 60 s):
    a StackOne outage that ends within that still verifies, and the event of one that
    does not is recorded then, not at the deadline."""
    first_wait = deadline / 2**LOOKUP_ATTEMPTS
    return RetryPolicy(LOOKUP_ATTEMPTS, first_wait=first_wait, longest_wait=deadline / 4)


@dataclass(slots=True)
class _Waiting:
    """An account's entries read from the inbox and not yet handed to a task."""

    entries: list[InboxEntry] = field(default_factory=list)
    oldest: float = float("inf")
    newest: float = 0.0
    ready_at: float = 0.0

    def add(self, entries: list[InboxEntry]) -> None:
        """Adds entries, which arrived after those already here."""
        self.entries += entries
        now = time.time()
        for entry in entries:
            # Another replica's clock may be ahead: a receipt is never later than now,
            # so no look-up waits for a time that has not come.
            received_at = min(entry.received_at, now)
            self.oldest = min(self.oldest, received_at)
            self.newest = max(self.newest, received_at)


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of verifying one group of webhooks."""

    state: pb.Verification.ValueType
    account: pb.Account | None = None  # StackOne's answer, when verified
    error: str = ""
    outcome: str = "verified"  # the metric label


class Verifier:
    """Drains the inbox forever; see the module docstring.

    Args:
        log: the event log whose inbox it drains.
        accounts: the StackOne client (None: everything is recorded unverified).
        deadline: seconds from receipt within which every webhook is recorded (from this
            verifier's start for webhooks accepted before it).
        lookup_timeout: seconds one look-up attempt may take.
        quiet: seconds an account's look-up waits for more of its webhooks (so that they
            share it), from the newest; never more than 5 times `quiet` from the oldest, nor
            half the deadline. Accounts with nothing to look up go at once.
        concurrency: accounts verified at once (look-ups in flight, at most).
        read_ahead: inbox entries held in memory at most.
        tracing: where the spans of look-ups, folds and recordings go; each continues the
            trace of its account's first webhook and links to every webhook it covers.
        upgrade: the upgrade path for entries an earlier release wrote with only their
            raw body (`gateway.webhook.upgraded`, which parses it); without it they are
            recorded with the id, type and account id they were stored under.
    """

    def __init__(
        self,
        log: Inbox,
        accounts: StackOneClient | None,
        *,
        metrics: Metrics,
        deadline: float = 60.0,
        lookup_timeout: float = 10.0,
        quiet: float = 1.0,
        concurrency: int = 16,
        read_ahead: int = 10_000,
        retry_interval: float = 1.0,
        tracing: Tracing = OFF,
        upgrade: Callable[[InboxEntry], InboxEntry] | None = None,
    ) -> None:
        self._log = log
        self._upgrade = upgrade
        self._tracer = tracing.tracer() if tracing.enabled else None
        self._accounts = accounts
        self._metrics = metrics
        self._deadline = deadline
        self._lookup_timeout = lookup_timeout
        self._lookup_policy = lookup_policy(deadline)
        self._concurrency = concurrency
        self._quiet = quiet
        self._read_ahead = read_ahead
        self._surviving = RetryPolicy(
            attempts=None, first_wait=retry_interval, longest_wait=max(5.0, retry_interval)
        )
        self._queued: dict[str, _Waiting] = {}
        # (ready_at, tie-break, account): an account's newest entry is the current one;
        # older ones (and those of accounts dispatched since) are skipped when popped.
        self._ready: list[tuple[float, int, str]] = []
        self._pushes = itertools.count()
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._held = 0
        self._read_through = 0
        self._stats_at = 0.0
        self._capped = False  # the last read stopped at `read_ahead`, not at the end
        self._started_at = time.time()

    async def run(self) -> None:
        """Verifies inbox entries until cancelled; a failure is logged, counted and
        retried under the retry policy (waits from `retry_interval` doubling to 5 s at
        most), so the stage never dies."""
        inbox_wait: asyncio.Task[None] | None = None
        must_read = True
        try:
            while True:
                next_ready = await self._step(must_read)
                if inbox_wait is None or inbox_wait.done():
                    inbox_wait = asyncio.create_task(
                        self._log.wait_for_inbox(self._read_through, 1.0)
                    )
                await asyncio.wait(
                    {inbox_wait, *self._busy.values()},
                    timeout=next_ready,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                # Read the inbox when it may have grown (or once a second), or when
                # read-ahead stopped short and room was made since.
                must_read = inbox_wait.done() or (self._capped and self._held < self._read_ahead)
        finally:
            await cancel_all([*self._busy.values(), *([inbox_wait] if inbox_wait else [])])

    async def _step(self, must_read: bool) -> float | None:
        """Reads the inbox (if `must_read`) and starts the accounts that are ready;
        returns the seconds until the next one is. Retried until it succeeds: the stage
        must outlive any failure."""

        async def step() -> float | None:
            await self._refresh_stats()
            if must_read:
                await self._read_more()
            return self._dispatch()

        return await self._surviving.call(step, self._step_failed)

    def _step_failed(self, error: Exception) -> bool:
        self._metrics.background_failures.labels("verifier").inc()
        _log.error("verifier step failed, retrying: %s", error, exc_info=error)
        return True

    async def _refresh_stats(self) -> None:
        now = time.monotonic()
        if now - self._stats_at < 1.0:
            return
        self._stats_at = now
        stats = await self._log.inbox_stats()
        self._metrics.inbox_depth.set(stats.depth)
        oldest = stats.oldest_received_at
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)  # clocks differ
        self._metrics.inbox_oldest_age.set(age)

    async def _read_more(self) -> None:
        self._capped = False
        while True:
            if self._held >= self._read_ahead:
                self._capped = True
                return
            limit = min(_PAGE, self._read_ahead - self._held)
            entries = await self._log.pending(self._read_through, limit)
            by_account: dict[str, list[InboxEntry]] = {}
            for entry in entries:
                by_account.setdefault(entry.account_id, []).append(entry)
            for account_id, of_account in by_account.items():
                self._enqueue(account_id, of_account)
            if entries:
                self._read_through = entries[-1].seq
            self._held += len(entries)
            if len(entries) < limit:
                return

    def _enqueue(self, account_id: str, entries: list[InboxEntry]) -> None:
        """Adds entries of an account, after those already waiting."""
        waiting = self._queued.get(account_id)
        if waiting is None:
            waiting = self._queued[account_id] = _Waiting()
        waiting.add(entries)
        waiting.ready_at = self._ready_at(waiting)
        heapq.heappush(self._ready, (waiting.ready_at, next(self._pushes), account_id))

    def _dispatch(self) -> float | None:
        """Starts the accounts that are ready; returns the seconds until the next one is
        (None: none is waiting)."""
        now = time.time()
        deferred: list[tuple[float, int, str]] = []
        while self._ready and self._ready[0][0] <= now and len(self._busy) < self._concurrency:
            item = heapq.heappop(self._ready)
            waiting = self._queued.get(item[2])
            if waiting is None or waiting.ready_at != item[0]:
                continue  # superseded by a later push, or dispatched already
            if item[2] in self._busy:
                deferred.append(item)  # after this round of the account is recorded
                continue
            del self._queued[item[2]]
            self._busy[item[2]] = asyncio.create_task(
                self._verify_account(item[2], waiting.entries), name=f"verify-{item[2][:32]}"
            )
        for item in deferred:
            heapq.heappush(self._ready, item)
        if not self._ready or len(self._busy) >= self._concurrency:
            return None  # woken by new entries or by a finished account
        return max(0.0, self._ready[0][0] - now) if not deferred else None

    def _ready_at(self, waiting: _Waiting) -> float:
        """When an account's look-up should start: after a quiet period, so that webhooks
        arriving in a burst share it, bounded from its oldest webhook."""
        if waiting.entries[-1].type not in VERIFIED_TYPES:
            return 0.0  # nothing to look up: the last group needs none, earlier are superseded
        oldest = max(waiting.oldest, self._started_at)
        return min(
            waiting.newest + self._quiet,
            oldest + 5 * self._quiet,
            oldest + self._deadline / 2,
        )

    async def _verify_account(self, account_id: str, entries: list[InboxEntry]) -> None:
        """Records the account's entries, retried until it succeeds (its later entries
        wait for these: the account stays busy)."""

        def failed(error: Exception) -> bool:
            self._metrics.background_failures.labels("verifier").inc()
            _log.warning("verifying account %s failed, will retry: %s", account_id, error)
            return True

        try:
            await self._surviving.call(lambda: self._settle_all(account_id, entries), failed)
            self._held -= len(entries)
        finally:
            del self._busy[account_id]

    def _span(
        self, name: str, entries: Sequence[InboxEntry], *, parent: Context | None = None
    ) -> AbstractContextManager[Span | None]:
        """A span of work on `entries` (one account's), linked to each one's receipt."""
        if self._tracer is None:
            return nullcontext()  # off: not even a no-op span (6 µs each)
        return self._tracer.start_as_current_span(
            name,
            context=parent,
            links=links_to(entry.traceparent for entry in entries),
            attributes={
                "stackone.account_id": entries[0].account_id,
                "stackone.webhooks": len(entries),
            },
        )

    async def _settle_all(self, account_id: str, entries: list[InboxEntry]) -> None:
        """Records every entry of the account not yet recorded. Another replica may record
        part of a group first: what it left is read again and recorded in a later round."""
        # The first webhook's trace goes on to its event; the others are linked.
        with self._span("verify account", entries, parent=parent_of(entries[0].traceparent)):
            await self._settle_rounds(account_id, entries)

    async def _settle_rounds(self, account_id: str, entries: list[InboxEntry]) -> None:
        unsettled = await self._log.unsettled(entries)
        for _ in range(_SETTLE_ROUNDS):
            if not unsettled:
                return
            records = await self.records(unsettled)
            with (
                self._span("record account events", unsettled),
                self._metrics.append_seconds.time(),
            ):
                left = (await self._log.settle(unsettled, records)).unrecorded
            unsettled = await self._log.unsettled(left) if left else []
        raise EventLogUnavailable(
            f"account {account_id} was still being recorded by another replica; retrying"
        )

    async def records(self, entries: Sequence[InboxEntry]) -> list[EventRecord]:
        """The events recording `entries` (one account's, in arrival order)."""
        if self._upgrade is not None:
            entries = [self._upgrade(entry) for entry in entries]
        groups: list[list[InboxEntry]] = []
        for entry in entries:
            folds = entry.type in VERIFIED_TYPES
            if folds and groups and groups[-1][0].type in VERIFIED_TYPES:
                groups[-1].append(entry)
            else:
                groups.append([entry])
        records: list[EventRecord] = []
        for index, group in enumerate(groups):
            with self._span("fold account webhooks", group):
                records.append(await self._record_group(group, groups[index + 1 :]))
        return records

    async def _record_group(
        self, group: list[InboxEntry], later_groups: Sequence[list[InboxEntry]]
    ) -> EventRecord:
        """The event recording one group, verified unless later webhooks supersede it."""
        if group[0].type not in VERIFIED_TYPES:
            verification = _NOT_NEEDED
        elif later_groups:
            later = later_groups[0][0].type
            verification = Verification(
                pb.VERIFICATION_UNVERIFIED,
                error=f"superseded by a later {later} before it could be verified",
                outcome="superseded",
            )
        else:
            with self._span("look up account", group):
                verification = await self._verify(group)
        self._metrics.verifications.labels(verification.outcome).inc()
        return _record_of(group, verification)

    async def _verify(self, group: Sequence[InboxEntry]) -> Verification:
        account_id = group[0].account_id
        if self._accounts is None:
            return Verification(
                pb.VERIFICATION_UNVERIFIED,
                error="no StackOne client is configured",
                outcome="no_client",
            )
        remaining = self._deadline_of(group) - time.time()
        if remaining <= 0:
            why = "its turn for a look-up came after the deadline (a backlog of look-ups)"
            return self._unverified_in_time(account_id, why)
        try:
            # One call: the client retries it, under the look-up's policy, within the deadline.
            account = await self._accounts.get_account(
                account_id,
                deadline=remaining,
                priority=Priority.VERIFY,
                attempt_timeout=self._lookup_timeout,
                retry=self._lookup_policy,
            )
        except _FINAL_ERRORS as error:
            return Verification(pb.VERIFICATION_UNVERIFIED, error=str(error), outcome="error")
        except StackOneError as error:
            tries = f"after {error.attempts} of at most {LOOKUP_ATTEMPTS} attempts"
            return self._unverified_in_time(account_id, f"{error} ({tries})")
        return Verification(pb.VERIFICATION_VERIFIED, account=account_message(account))

    def _unverified_in_time(self, account_id: str, why: str) -> Verification:
        _log.warning("account %s not verified within the deadline: %s", account_id, why)
        return Verification(
            pb.VERIFICATION_UNVERIFIED,
            error=f"not verified within {self._deadline:g}s of receipt: {why}",
            outcome="deadline",
        )

    def _deadline_of(self, group: Sequence[InboxEntry]) -> float:
        """When a group's look-ups must end: `deadline` after its first webhook's receipt,
        counted while a verifier runs here. Webhooks accepted before this process started
        (a stop, a deploy, an outage) get their whole deadline from the start, so each
        gets its look-up after a restart however long the service was down."""
        received_at = min(min(entry.received_at for entry in group), time.time())
        return max(received_at, self._started_at) + self._deadline


_NOT_NEEDED = Verification(pb.VERIFICATION_NOT_APPLICABLE, outcome="not_needed")


def record_alone(entry: InboxEntry) -> EventRecord | None:
    """The event the verifier records for `entry` by itself when its type needs no
    look-up (None for `created` and `updated`): the door records it at once when nothing
    of the account is pending (see `Inbox.accept`)."""
    if entry.type in VERIFIED_TYPES:
        return None
    return _record_of([entry], _NOT_NEEDED)


def _record_of(group: Sequence[InboxEntry], verification: Verification) -> EventRecord:
    """The one event recording a group of an account's webhooks, as `verification` says."""
    # The newest webhook of a group carries the state.
    message = _folded(group, webhook_event(group[-1]), verification)
    return event_record(
        message,
        inbox_through=max(entry.seq for entry in group),
        repeat=all(is_repeat(entry.event_id) for entry in group),
    )


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _folded(
    group: Sequence[InboxEntry], newest: pb.AccountEvent, verification: Verification
) -> pb.AccountEvent:
    """One event for a group: the first webhook's id and receipt, the newest state."""
    first = group[0]
    account = newest.account
    if verification.account is not None:
        verified = verification.account
        # Keep what the webhook said where StackOne's answer leaves a field empty.
        for field_descriptor, value in account.ListFields():
            if not getattr(verified, field_descriptor.name):
                setattr(verified, field_descriptor.name, value)
        account = verified
    message = pb.AccountEvent(
        event_id=first.event_id,
        type=newest.type if len(group) == 1 else first.type,
        account=account,
        occurred_at=newest.occurred_at if newest.HasField("occurred_at") else None,
        received_at=_timestamp(first.received_at),
        source=pb.EVENT_SOURCE_WEBHOOK,
        verification=verification.state,
        verification_error=verification.error,
        covered_event_ids=list(dict.fromkeys(entry.event_id for entry in group)),
        # The span recording it (the webhook's own when the door records it at once).
        traceparent=current_traceparent() or first.traceparent,
    )
    if not message.HasField("occurred_at"):
        message.occurred_at.CopyFrom(_timestamp(group[-1].received_at))
    return message
