"""Periodic reconciliation: finds account changes no webhook delivered.

A sweep lists every account from StackOne and compares it with the last state the log
recorded for it; each difference becomes a synthesized `account.created`, `.updated` or
`.deleted` event marked as coming from reconciliation. Event ids are derived from the
change itself, so replicas sweeping at the same time produce the same ids and the log
records each change once. Accounts changed within the grace period are left for their
webhook, which is usually on its way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from service.api.convert import account_message, timestamp
from service.api.v1 import stackone_connect_pb2 as pb
from service.events.ingest import event_record
from service.events.log import EventLog
from service.events.model import EventRecord, KnownAccount
from service.metrics import Metrics
from service.stackone.budget import Priority
from service.stackone.errors import StackOneError
from service.stackone.models import AccountListQuery, LinkedAccount

_log = logging.getLogger(__name__)
PAGE_SIZE = 100


class AccountLister(Protocol):
    """Lists accounts (the StackOne client)."""

    async def list_accounts(
        self,
        query: AccountListQuery,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.CALLER,
    ) -> list[LinkedAccount]:
        """One page of accounts, spending the StackOne budget at `priority`."""
        ...


async def all_accounts(lister: AccountLister, *, deadline: float) -> list[LinkedAccount]:
    """Every account StackOne reports, page by page until a short page.

    Spends the StackOne budget as reconciliation, the last in line.
    """
    accounts: list[LinkedAccount] = []
    page = 0
    while True:
        batch = await lister.list_accounts(
            AccountListQuery(page=page, page_size=PAGE_SIZE),
            deadline=deadline,
            priority=Priority.RECONCILE,
        )
        accounts.extend(batch)
        if len(batch) < PAGE_SIZE:
            return accounts
        page += 1


def _synthesized(event_type: str, account: pb.Account, version: str) -> EventRecord:
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
            if event_type == "account.deleted"
            else pb.VERIFICATION_VERIFIED
        ),
    )
    return event_record(message)


def changes(
    remote: Sequence[LinkedAccount],
    known: dict[str, KnownAccount],
    *,
    settled_before: datetime,
) -> list[EventRecord]:
    """The events that bring the log's account states in line with StackOne's list."""
    records: list[EventRecord] = []
    seen: set[str] = set()
    for account in remote:
        seen.add(account.id)
        if account.updated_at is not None and _aware(account.updated_at) > settled_before:
            continue
        message = account_message(account)
        version = message.updated_at.ToJsonString() if message.HasField("updated_at") else ""
        last = known.get(account.id)
        if last is None or last.deleted:
            records.append(_synthesized("account.created", message, version))
        elif (last.status, last.updated_at) != (message.raw_status, version):
            records.append(_synthesized("account.updated", message, version or message.raw_status))
    for account_id, last in sorted(known.items()):
        if not last.deleted and account_id not in seen:
            gone = pb.Account(id=account_id, raw_status=last.status)
            records.append(_synthesized("account.deleted", gone, last.updated_at))
    return records


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Reconciler:
    """Runs reconciliation sweeps every `interval` seconds."""

    def __init__(
        self,
        log: EventLog,
        lister: AccountLister,
        *,
        interval: float,
        grace: float,
        metrics: Metrics,
    ) -> None:
        self._log = log
        self._lister = lister
        self._interval = interval
        self._grace = grace
        self._metrics = metrics

    async def sweep(self) -> int:
        """Runs one sweep; returns how many events it recorded."""
        remote = await all_accounts(self._lister, deadline=max(self._interval, 30.0))
        known = await self._log.known_accounts()
        settled_before = datetime.now(UTC) - timedelta(seconds=self._grace)
        records = changes(remote, known, settled_before=settled_before)
        if not records:
            return 0
        outcomes = await self._log.append(records)
        recorded = sum(not outcome.duplicate for outcome in outcomes)
        _log.info("reconciliation recorded %d event(s)", recorded, extra={"recorded": recorded})
        return recorded

    async def run(self) -> None:
        """Sweeps forever; a failed sweep is logged and retried at the next interval."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except StackOneError as error:
                _log.warning("reconciliation sweep failed: %s", error)
            else:
                self._metrics.reconcile_sweeps.inc()
