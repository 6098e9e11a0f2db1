"""What a caller acting for some customers only may see and touch (`service.owners`).

The servicer asks these before and after its StackOne and registry calls when the
caller has owners: an account of another customer is answered as a missing one, a
session for another customer is refused, and listings and snapshots keep only the
caller's customers. Before a mutation the account's owner is StackOne's current answer,
never the registry's copy (which may predate a change of owner): another customer's
account and a missing one then take the same path, one `GET /accounts/{id}` from the
caller's share, and get the same answer. Whether a listing has another page is decided on
the caller's accounts alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from service.events.log import AccountRegistry
from service.events.model import EventFilter
from service.events.registry import (
    REGISTRY_PAGE_LIMIT,
    RegisteredAccount,
    RegistryPage,
    RegistryQuery,
)
from service.owners import AccountNotAllowed, OwnerNotAllowed, OwnerScope
from service.rpc.limits import MAX_PAGE_SIZE
from service.stackone.client import StackOneClient
from service.stackone.errors import StackOneNotFound
from service.stackone.models import AccountListQuery, LinkedAccount
from stackone_connect.v1 import stackone_connect_pb2 as pb

STACKONE_SCAN_PAGE = MAX_PAGE_SIZE
"""StackOne accounts read at once by a scoped listing that StackOne cannot filter."""


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
    """

    def __init__(
        self,
        log: AccountRegistry,
        stackone: StackOneClient,
        *,
        scan_page: int = REGISTRY_PAGE_LIMIT,
    ) -> None:
        self._log = log
        self._stackone = stackone
        self._scan_page = scan_page

    async def owner_of(self, account_id: str, deadline: float) -> str | None:
        """The account's `origin_owner_id` as StackOne reports it now; None when StackOne
        has no such account. Never the registry's: it may not have recorded a new owner."""
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

    async def registry_page(self, scope: OwnerScope, query: RegistryQuery) -> RegistryPage:
        """A registry page of the caller's customers' accounts only. A prefix is no index:
        registry pages are read on until one more than `query.limit` are found or the
        registry ends, so that `more` says whether another of the caller's accounts
        follows, and the next page starts after the last account returned (its own)."""
        scan = replace(query, limit=max(query.limit + 1, self._scan_page))
        page = await self._log.registry(scan)
        kept = [entry for entry in page.accounts if scope.allows(entry.origin_owner_id)]
        while page.more and page.accounts and len(kept) <= query.limit:
            after = page.accounts[-1].account_id
            page = await self._log.registry(replace(scan, after_account=after, as_of=page.cursor))
            kept += [entry for entry in page.accounts if scope.allows(entry.origin_owner_id)]
        more = len(kept) > query.limit
        return RegistryPage(kept[: query.limit], page.cursor, page.complete, more)

    async def stackone_page(
        self, scope: OwnerScope, query: AccountListQuery, start: int, deadline: float
    ) -> tuple[list[LinkedAccount], int | None]:
        """Up to `query.page_size` of the caller's accounts among StackOne's listing from
        its `start`th account (StackOne's filters but owners, which it cannot match by
        prefix), and the index of the caller's next one (None: there is none). StackOne is
        read on until one more is found or its listing ends."""
        kept: list[LinkedAccount] = []
        page, skip = divmod(start, STACKONE_SCAN_PAGE)
        while True:
            scan = query.model_copy(update={"page": page, "page_size": STACKONE_SCAN_PAGE})
            accounts = await self._stackone.list_accounts(scan, deadline=deadline)
            for index in range(skip, len(accounts)):
                if not scope.allows(accounts[index].origin_owner_id or ""):
                    continue
                if len(kept) == query.page_size:
                    return kept, page * STACKONE_SCAN_PAGE + index
                kept.append(accounts[index])
            if len(accounts) < STACKONE_SCAN_PAGE:
                return kept, None
            page, skip = page + 1, 0


def narrowed_filter(scope: OwnerScope, event_filter: EventFilter) -> EventFilter:
    """A stream's filter with the caller's owners: named owners must be the caller's, and
    without any, exact-only owners become the owner filter (which the registry indexes).
    An account that moves to an owner outside them is sent as a departure telling only
    its id and state before (`service.events.feed.sent_of`)."""
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
