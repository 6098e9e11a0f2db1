"""Periodic reconciliation: finds account changes no webhook delivered.

A sweep lists every account from StackOne and compares it with the last state the log
recorded for it; each difference becomes a synthesized `account.created`, `.updated` or
`.deleted` event marked as coming from reconciliation. Event ids are derived from the
change itself, so replicas sweeping at the same time produce the same ids and the log
records each change once. Accounts changed within the grace period are left for their
webhook, which is usually on its way, and so are accounts with an event recorded since
the listing began: the listing may show them as they were before it, and recording that
would undo the change (a deletion brought back).

StackOne documents neither a maximum page size nor how paging ends, so a listing is only
trusted for what it shows: it ends at a short page, a page with nothing new, MAX_PAGES
or the sweep's time limit, and an account it does not show is deleted only once its own
look-up answers 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.aio import cancel_all
from service.api.convert import account_message, timestamp
from service.events.log import LogAndRegistry
from service.events.model import (
    ACCOUNT_DELETED,
    AccountEventType,
    EventRecord,
    KnownAccount,
    deletes_account,
)
from service.events.records import event_record
from service.events.registry import RegistryQuery
from service.metrics import Metrics
from service.stackone.budget import Priority
from service.stackone.client import StackOneClient
from service.stackone.errors import StackOneError, StackOneNotFound, StackOneUnavailable
from service.stackone.models import AccountListQuery, LinkedAccount
from service.tracing import OFF, Tracing, current_traceparent
from stackone_connect.v1 import stackone_connect_pb2 as pb

_log = logging.getLogger(__name__)
PAGE_SIZE = 100
MAX_PAGES = 1000  # 100,000 accounts; a listing that goes on is not StackOne's own
# StackOne answers a page in 0.1-0.3 s: one page at a time, a first listing of 10,000
# accounts would take 30 s where the background budget allows 7.5 s. The price: up to
# PAGES_IN_FLIGHT - 1 pages past the end asked for in vain.
PAGES_IN_FLIGHT = 4
MAX_CONFIRMATIONS = 100  # look-ups of missing accounts per sweep; the rest wait a sweep
SWEEP_SECONDS = 300.0
READ_PAGE = 1000  # events read at a time for the accounts changed during a sweep


async def all_accounts(source: StackOneClient, *, deadline: float) -> list[LinkedAccount]:
    """Every account StackOne lists within `deadline` seconds, page by page.

    Ends at a short page or at a page with no account not seen before (a listing that
    ignores `page`), and raises StackOneUnavailable past MAX_PAGES. Spends the StackOne
    budget as reconciliation, the last in line. The first page is asked for alone; once
    one comes back full, PAGES_IN_FLIGHT are asked for at a time, read in order.
    """
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + deadline

    def ask(page: int) -> asyncio.Task[list[LinkedAccount]]:
        query = AccountListQuery(page=page, page_size=PAGE_SIZE)
        remaining = max(0.0, ends_at - loop.time())
        return asyncio.create_task(
            source.list_accounts(query, deadline=remaining, priority=Priority.RECONCILE)
        )

    accounts: dict[str, LinkedAccount] = {}
    in_flight = deque([ask(0)])
    asked = 1
    try:
        while in_flight:
            batch = await in_flight.popleft()
            new = {account.id: account for account in batch if account.id not in accounts}
            accounts.update(new)
            if len(batch) < PAGE_SIZE or not new:
                return list(accounts.values())
            while asked < MAX_PAGES and len(in_flight) < PAGES_IN_FLIGHT:
                in_flight.append(ask(asked))
                asked += 1
    finally:
        await cancel_all(in_flight)  # pages past the end, or past a failure
    raise StackOneUnavailable(f"StackOne's account listing did not end within {MAX_PAGES} pages")


def _synthesized(event_type: AccountEventType, account: pb.Account, version: str) -> EventRecord:
    now = datetime.now(UTC)
    message = pb.AccountEvent(
        event_id=f"reconcile:{event_type}:{account.id}:{version}",
        type=event_type,
        account=account,
        occurred_at=account.updated_at if account.HasField("updated_at") else timestamp(now),
        received_at=timestamp(now),
        source=pb.EVENT_SOURCE_RECONCILIATION,
        verification=(
            pb.VERIFICATION_NOT_APPLICABLE
            if deletes_account(event_type)
            else pb.VERIFICATION_VERIFIED
        ),
        traceparent=current_traceparent(),  # the sweep's
    )
    return event_record(message)


@dataclass(frozen=True, slots=True)
class Differences:
    """What a listing shows against the log: events to record, accounts to look up."""

    records: list[EventRecord]
    missing: list[str]


def changes(
    remote: Sequence[LinkedAccount],
    known: dict[str, KnownAccount],
    *,
    settled_before: datetime,
) -> Differences:
    """The created and updated events that bring the log in line with StackOne's list,
    and the live accounts of the log that the list does not show."""
    records = [
        record
        for account in remote
        if (record := _change(account, known.get(account.id), settled_before)) is not None
    ]
    seen = {account.id for account in remote}
    missing = [
        account_id
        for account_id, last in sorted(known.items())
        if not last.deleted and account_id not in seen
    ]
    return Differences(records, missing)


def _change(
    account: LinkedAccount, last: KnownAccount | None, settled_before: datetime
) -> EventRecord | None:
    if account.updated_at is not None and _recent(_aware(account.updated_at), settled_before):
        return None
    message = account_message(account)
    version = message.updated_at.ToJsonString() if message.HasField("updated_at") else ""
    if last is None or last.deleted:
        return _synthesized(AccountEventType.CREATED, message, version)
    if (last.status, last.updated_at) != (message.raw_status, version):
        return _synthesized(AccountEventType.UPDATED, message, version or message.raw_status)
    return None


def _deleted(account_id: str, last: KnownAccount) -> EventRecord:
    gone = pb.Account(id=account_id, raw_status=last.status)
    return _synthesized(ACCOUNT_DELETED, gone, last.updated_at)


def _recent(updated_at: datetime, settled_before: datetime) -> bool:
    """Whether a change may still have its webhook in flight. A time later than now is
    StackOne's clock running ahead, which says nothing of when the change was: waiting
    for it would keep the change out of the log until that time."""
    return settled_before < updated_at <= datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Reconciler:
    """Runs reconciliation sweeps every `interval` seconds, counting each by its outcome in
    `reconcile_sweeps_total` (what anyone waiting on a sweep having happened reads)."""

    def __init__(
        self,
        log: LogAndRegistry,
        source: StackOneClient,
        *,
        interval: float,
        grace: float,
        metrics: Metrics,
        report_complete: Callable[[bool], Awaitable[None]] | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self._report_complete = report_complete
        self._tracer = tracing.tracer()
        self._log = log
        self._source = source
        self._interval = interval
        self._grace = grace
        self._metrics = metrics

    async def sweep(self) -> int:
        """Runs one sweep (a trace of its own); returns how many events it recorded."""
        with self._tracer.start_as_current_span("reconcile sweep") as span:
            recorded = await self._sweep()
            span.set_attribute("stackone.recorded_events", recorded)
            return recorded

    async def _sweep(self) -> int:
        began = (await self._log.bounds(exact=True)).latest
        remote = await all_accounts(self._source, deadline=SWEEP_SECONDS)
        known = await self._log.known_accounts()
        settled_before = datetime.now(UTC) - timedelta(seconds=self._grace)
        found = changes(remote, known, settled_before=settled_before)
        found_records = found.records + await self._confirm_missing(
            found.missing[:MAX_CONFIRMATIONS], known, settled_before
        )
        # Read after `known`, so it covers every change `known` holds from past `began`.
        changed_meanwhile = await self._accounts_recorded_after(began)
        records = [r for r in found_records if r.account_id not in changed_meanwhile]
        recorded = 0
        if records:
            with self._tracer.start_as_current_span("record reconciliation events"):
                outcomes = await self._log.append(records)
            recorded = sum(not outcome.duplicate for outcome in outcomes)
            _log.info("reconciliation recorded %d event(s)", recorded, extra={"recorded": recorded})
        # Every listed account is now in the registry (known, or recorded just now), but
        # those changed within the grace, whose webhooks record them.
        await self._log.mark_registry_complete()
        await self._registry_is(complete=True)
        return recorded

    async def _accounts_recorded_after(self, cursor: int) -> set[str]:
        """The accounts with an event recorded after `cursor`. The listing may show such an
        account as it was before that event: left for the next sweep, not compared."""
        until = (await self._log.bounds(exact=True)).latest
        accounts: set[str] = set()
        while cursor < until:
            events = await self._log.read(cursor, READ_PAGE)
            if not events:
                break
            accounts.update(event.account_id for event in events)
            cursor = events[-1].cursor
        return accounts

    async def _registry_is(self, *, complete: bool) -> None:
        self._metrics.registry_complete.set(int(complete))
        if self._report_complete is not None:
            await self._report_complete(complete)

    async def _confirm_missing(
        self, missing: Sequence[str], known: dict[str, KnownAccount], settled_before: datetime
    ) -> list[EventRecord]:
        """Looks each unlisted account up: deleted on a 404, compared as listed otherwise."""
        records: list[EventRecord] = []
        for account_id in missing:
            try:
                account = await self._source.get_account(
                    account_id, deadline=SWEEP_SECONDS, priority=Priority.RECONCILE
                )
            except StackOneNotFound:
                records.append(_deleted(account_id, known[account_id]))
                continue
            if (record := _change(account, known[account_id], settled_before)) is not None:
                records.append(record)
        return records

    async def run(self) -> None:
        """Sweeps forever; a failed sweep is logged, counted and retried at the next interval.
        While the registry is not complete, the first sweep starts at once: it is what
        brings in the accounts linked before the service first ran."""
        try:
            complete = (await self._log.registry(RegistryQuery(limit=0))).complete
        except Exception:  # unknown: a sweep at once does no harm
            complete = False
        await self._registry_is(complete=complete)
        first = not complete
        while True:
            if not first:
                await asyncio.sleep(self._interval)
            first = False
            try:
                await self.sweep()
            except StackOneError as error:
                self._failed()
                _log.warning("reconciliation sweep failed: %s", error)
            except Exception:  # anything else too: the safety net stays up
                self._failed()
                _log.exception("reconciliation sweep failed; retrying in %ss", self._interval)
            else:
                self._metrics.reconcile_sweeps.labels("ok").inc()

    def _failed(self) -> None:
        self._metrics.reconcile_sweeps.labels("failed").inc()
        self._metrics.background_failures.labels("reconcile").inc()
