"""What a caller acting for some customers only may see and touch (`service.owners`).

The servicer asks these before and after its StackOne and registry calls when the
caller has owners: an account of another customer is answered as a missing one, a
session for another customer is refused, and listings and snapshots keep only the
caller's customers. Where an account's owner must be known first, the registry answers
without a StackOne call when it holds the account.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from service.api.v1 import stackone_connect_pb2 as pb
from service.events.log import EventLog
from service.events.model import EventFilter
from service.events.registry import (
    NEWEST,
    REGISTRY_PAGE_LIMIT,
    RegisteredAccount,
    RegistryPage,
    RegistryQuery,
)
from service.owners import AccountNotAllowed, OwnerNotAllowed, OwnerScope
from service.stackone.client import StackOneClient
from service.stackone.errors import StackOneNotFound
from service.stackone.models import LinkedAccount

MAX_SCANNED = 10 * REGISTRY_PAGE_LIMIT
"""Registry accounts one scoped listing page reads at most, looking for the caller's."""


def account_not_found(account_id: str) -> StackOneNotFound:
    """What a scoped caller is told of an account that is not one of its customers' and
    of one that does not exist: the same words, so that it cannot tell them apart."""
    return StackOneNotFound(404, f"Account {account_id} not found")


def refuse_other_owners(scope: OwnerScope, origin_owner_ids: Sequence[str]) -> None:
    """Raises `OwnerNotAllowed` for the first named owner the caller does not act for."""
    for owner in origin_owner_ids:
        if not scope.allows(owner):
            raise OwnerNotAllowed(owner)


class OwnedAccounts:
    """Owner checks of a scoped caller's calls, over the registry and StackOne.

    Args:
        scan_page: registry accounts read at once by a scoped listing.
        max_scanned: registry accounts one scoped listing page reads at most.
    """

    def __init__(
        self,
        log: EventLog,
        stackone: StackOneClient,
        *,
        scan_page: int = REGISTRY_PAGE_LIMIT,
        max_scanned: int = MAX_SCANNED,
    ) -> None:
        self._log = log
        self._stackone = stackone
        self._scan_page = scan_page
        self._max_scanned = max_scanned

    async def owner_of(self, account_id: str, deadline: float) -> str | None:
        """The account's `origin_owner_id`: the registry's when it holds the account (no
        StackOne call), else StackOne's; None when StackOne has no such account."""
        query = RegistryQuery(account_ids=frozenset({account_id}), as_of=NEWEST, limit=1)
        page = await self._log.registry(query)
        if page.accounts and page.accounts[0].origin_owner_id:
            return page.accounts[0].origin_owner_id
        try:
            account = await self._stackone.get_account(account_id, deadline=deadline)
        except StackOneNotFound:
            return None
        return account.origin_owner_id

    async def check_deletable(self, scope: OwnerScope, account_id: str, deadline: float) -> None:
        """Raises the not-found answer unless the account is one of the caller's customers'."""
        owner = await self.owner_of(account_id, deadline)
        if owner is None or not scope.allows(owner):
            raise account_not_found(account_id)

    async def check_reconnectable(
        self, scope: OwnerScope, account_id: str, deadline: float
    ) -> None:
        """Raises `AccountNotAllowed` unless the account is one of the caller's customers'."""
        owner = await self.owner_of(account_id, deadline)
        if owner is None or not scope.allows(owner):
            raise AccountNotAllowed(account_id)

    async def registry_page(
        self, scope: OwnerScope, query: RegistryQuery
    ) -> tuple[RegistryPage, str]:
        """A registry page of the caller's customers' accounts only, and the account id the
        next page starts after. A prefix is no index: registry pages are read on until
        `query.limit` are found, the registry ends, or `MAX_SCANNED` accounts were read
        (then the page holds fewer, and the next one goes on from there)."""
        scan = replace(query, limit=max(query.limit, self._scan_page))
        page = await self._log.registry(scan)
        kept = [entry for entry in page.accounts if scope.allows(entry.origin_owner_id)]
        scanned = len(page.accounts)
        while (
            page.more and page.accounts and len(kept) < query.limit and scanned < self._max_scanned
        ):
            after = page.accounts[-1].account_id
            page = await self._log.registry(replace(scan, after_account=after, as_of=page.cursor))
            kept += [entry for entry in page.accounts if scope.allows(entry.origin_owner_id)]
            scanned += len(page.accounts)
        if len(kept) > query.limit:
            kept = kept[: query.limit]
            return RegistryPage(kept, page.cursor, page.complete, True), kept[-1].account_id
        last_read = page.accounts[-1].account_id if page.accounts else ""
        return RegistryPage(kept, page.cursor, page.complete, page.more), last_read


def narrowed_filter(scope: OwnerScope, event_filter: EventFilter) -> EventFilter:
    """A stream's filter with the caller's owners: named owners must be the caller's, and
    without any, exact-only owners become the owner filter (which the registry indexes)."""
    refuse_other_owners(scope, sorted(event_filter.origin_owner_ids))
    owner_ids = event_filter.origin_owner_ids or scope.exact_only or frozenset()
    return replace(event_filter, origin_owner_ids=owner_ids, owners=scope)


def kept_accounts(scope: OwnerScope, accounts: Sequence[LinkedAccount]) -> list[LinkedAccount]:
    """The caller's customers' accounts among StackOne's."""
    return [account for account in accounts if scope.allows(account.origin_owner_id or "")]


def kept_entries(
    scope: OwnerScope | None, entries: Sequence[RegisteredAccount]
) -> Sequence[RegisteredAccount]:
    """The caller's customers' registry entries (all of them for an unscoped caller)."""
    if scope is None:
        return entries
    return [entry for entry in entries if scope.allows(entry.origin_owner_id)]


def checked_account(scope: OwnerScope, account: pb.Account, account_id: str) -> pb.Account:
    """`account` if it is one of the caller's customers', else the not-found answer."""
    if not scope.allows(account.origin_owner_id):
        raise account_not_found(account_id)
    return account
