"""The accounts read model: where `GetAccount` and `ListAccounts` are answered from.

A caller's scope (its owners, None for an unscoped caller) and `read_from` go in; the
accounts and where they came from come out. The registry answers when asked and complete
(with the cursor it reflects), StackOne otherwise; a scoped caller sees its customers'
accounts only, another customer's being answered as a missing one. The servicer keeps
what belongs to the wire: parsing, and sealing page positions into the caller's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.api import convert
from service.events.log import LogAndRegistry
from service.events.model import NotInRegistry
from service.events.registry import NEWEST, RegistryPage, RegistryQuery
from service.owners import OwnerScope
from service.rpc import owned, page_tokens, validation
from service.stackone.client import StackOneClient
from service.stackone.errors import StackOneNotFound
from stackone_connect.v1 import stackone_connect_pb2 as pb


@dataclass(frozen=True, slots=True)
class AccountsRead:
    """Accounts and where they came from.

    Attributes:
        accounts: the accounts, as the caller may see them.
        answered_from: the registry or StackOne.
        cursor: the public cursor a registry answer reflects ("" from StackOne).
        next_position: the plain position of the next page ("" when none follows), for
            the servicer to seal into the caller's page token.
    """

    accounts: list[pb.Account] = field(default_factory=list)
    answered_from: pb.ReadFrom.ValueType = pb.READ_FROM_STACKONE
    cursor: str = ""
    next_position: str = ""


class AccountsReadModel:
    """Reads accounts for a caller from the registry or StackOne."""

    def __init__(self, log: LogAndRegistry, stackone: StackOneClient) -> None:
        self._log = log
        self._stackone = stackone
        self._owned = owned.OwnedAccounts(log, stackone)

    async def account(
        self,
        scope: OwnerScope | None,
        account_id: str,
        read_from: pb.ReadFrom.ValueType,
        deadline: float,
    ) -> AccountsRead:
        """One account (a validated id): from the registry when asked and complete, else
        from StackOne; `StackOneNotFound` or `NotInRegistry` when the caller may not see it."""
        if read_from == pb.READ_FROM_REGISTRY:
            # Its newest entry, even one whose event this replica has not published yet.
            query = RegistryQuery(account_ids=frozenset({account_id}), as_of=NEWEST, limit=1)
            page = await self._log.registry(query)
            if page.complete:
                found = owned.kept_entries(scope, page.accounts)
                if not found:  # another customer's account is answered as a missing one
                    raise NotInRegistry(account_id)
                message = found[0].message(self._log.incarnation)
                return AccountsRead([message], pb.READ_FROM_REGISTRY)
        try:
            account = await self._stackone.get_account(account_id, deadline=deadline)
        except StackOneNotFound:
            if scope is None:
                raise
            raise owned.account_not_found(account_id) from None
        message = convert.account_message(account)
        if scope is not None:
            message = owned.checked_account(scope, message, account_id)
        return AccountsRead([message])

    @staticmethod
    def narrow(scope: OwnerScope | None, request: pb.ListAccountsRequest) -> bool:
        """Narrows a listing to the caller's owners (`OwnerNotAllowed` for another's);
        True when StackOne must be scanned for them, as it matches exact owners only."""
        if scope is None:
            return False
        owned.refuse_other_owners(scope, request.origin_owner_ids)
        if not request.origin_owner_ids and scope.exact_only:
            request.origin_owner_ids.extend(sorted(scope.exact_only))
        return not request.origin_owner_ids

    async def listing(
        self,
        scope: OwnerScope | None,
        request: pb.ListAccountsRequest,
        scan_from: int | None,
        deadline: float,
    ) -> AccountsRead:
        """One page of a listing `narrow` has narrowed, whose page token is the plain
        position (or, continuing a scan of StackOne, empty and `scan_from` set)."""
        if request.read_from == pb.READ_FROM_REGISTRY and scan_from is None:
            registry_query = validation.registry_list(request)
            if registry_query is not None:
                page = (
                    await self._log.registry(registry_query)
                    if scope is None
                    else await self._owned.registry_page(scope, registry_query)
                )
                if page.complete:
                    return self._registry_read(page)
            request.page_token = ""  # a listing that falls back starts at StackOne's first page
        query = validation.list_query(request)
        if scope is not None and not request.origin_owner_ids:
            if request.page_token:  # StackOne's page number: no position in a scan
                raise page_tokens.not_ours()
            accounts, next_index = await self._owned.stackone_page(
                scope, query, scan_from or 0, deadline
            )
            following = "" if next_index is None else page_tokens.scan_position(next_index)
        else:
            accounts = await self._stackone.list_accounts(query, deadline=deadline)
            full_page = len(accounts) >= query.page_size
            following = validation.page_token(query.page + 1) if full_page else ""
        messages = [convert.account_message(account) for account in accounts]
        return AccountsRead(messages, pb.READ_FROM_STACKONE, next_position=following)

    def _registry_read(self, page: RegistryPage) -> AccountsRead:
        """A page of a registry listing, with the cursor all its pages reflect; the next
        page starts after its last account."""
        following = (
            validation.registry_page_token(page.cursor, page.accounts[-1].account_id)
            if page.more and page.accounts
            else ""
        )
        incarnation = self._log.incarnation
        return AccountsRead(
            [entry.message(incarnation) for entry in page.accounts],
            pb.READ_FROM_REGISTRY,
            cursor=incarnation.public(page.cursor),
            next_position=following,
        )
