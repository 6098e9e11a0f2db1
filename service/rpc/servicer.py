"""The ConnectService servicer: protocol data in, domain calls, protocol data out.

Errors are raised as domain exceptions and mapped to statuses by
`service.rpc.interceptor.CallInterceptor`; validation happens before any upstream call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from service.api import convert
from service.events.feed import Feed, resolve_start
from service.events.log import LogAndRegistry, RequestRecords
from service.events.model import (
    Bookmark,
    EventFilter,
    RegistryIncomplete,
    ServerDraining,
)
from service.events.registry import REGISTRY_PAGE_LIMIT, RegistryPage, RegistryQuery
from service.metrics import Metrics
from service.owners import CALLER_OWNERS
from service.rpc import auth, owned, page_tokens, sessions, validation, wire
from service.rpc.accounts import AccountsReadModel
from service.rpc.audit import CALLER
from service.rpc.page_tokens import PageTokens
from service.rpc.retryable import RetryableCalls
from service.rpc.subscriptions import SubscriptionRpcs
from service.stackone.client import StackOneClient
from service.subscriptions.manager import SubscriptionManager
from stackone_connect.v1 import stackone_connect_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]
MATCH_ALL = EventFilter()


class ConnectServicer(SubscriptionRpcs):
    """Serves ConnectService over a StackOne client and an event log."""

    def __init__(
        self,
        stackone: StackOneClient,
        log: LogAndRegistry,
        *,
        bookmark_interval: float,
        stop: asyncio.Event,
        upstream_timeout: float,
        metrics: Metrics,
        page_tokens: PageTokens,
        request_records: RequestRecords,
        subscriptions: SubscriptionManager | None = None,
    ) -> None:
        super().__init__(subscriptions, log)
        self._metrics = metrics
        self._stackone = stackone
        self._log = log
        self._upstream_timeout = upstream_timeout
        self._bookmark_interval = bookmark_interval
        self._stop = stop
        self._frames = wire.FrameCache(incarnation=lambda: log.incarnation)
        self._owned = owned.OwnedAccounts(log, stackone)
        self._accounts = AccountsReadModel(log, stackone)
        self._page_tokens = page_tokens
        self._connector_profiles = sessions.ConnectorProfiles(stackone, page_tokens)
        self._retryable = RetryableCalls(request_records)

    def _deadline(self, context: Context) -> float:
        """Seconds an upstream call may take: the caller's deadline, capped by the setting."""
        remaining: float | None = context.time_remaining()  # None: no deadline
        return (
            self._upstream_timeout if remaining is None else min(remaining, self._upstream_timeout)
        )

    def _change_deadline(
        self, request: pb.CreateSessionRequest | pb.DeleteAccountRequest, context: Context
    ) -> float:
        """Seconds a change may take at StackOne: with a request id, the whole upstream
        timeout whatever the caller's deadline, so that its answer is recorded for the
        caller's retry rather than lost to a timeout (after which the retry would ask
        StackOne again)."""
        return self._upstream_timeout if request.request_id else self._deadline(context)

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.Session:
        """Validates, then asks StackOne for a fresh connect session (once per request id)."""
        body = validation.session_create(request)

        async def create() -> pb.Session:
            if (scope := CALLER_OWNERS.get()) is not None:
                owned.refuse_other_owners(scope, [body.origin_owner_id])
                if body.account_id:
                    await self._owned.check_reconnectable(
                        scope, body.account_id, self._deadline(context)
                    )
            session = await self._stackone.create_connect_session(
                body, deadline=self._change_deadline(request, context)
            )
            return convert.session_message(session, body.expires_in)

        return await self._retryable.once(
            "CreateSession", request, pb.Session, create, wait=self._deadline(context)
        )

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:
        """One account from StackOne, or from the registry when asked and complete."""
        account_id = validation.account_id(request.account_id)
        read = await self._accounts.account(
            CALLER_OWNERS.get(), account_id, request.read_from, self._deadline(context)
        )
        return read.accounts[0]

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: Context
    ) -> pb.ListAccountsResponse:
        """One page of accounts, from StackOne or (asked, and complete) the registry."""
        scope = CALLER_OWNERS.get()
        scanned = self._accounts.narrow(scope, request)
        request.page_token, scan_from = self._opened(request.page_token, scanned)
        read = await self._accounts.listing(scope, request, scan_from, self._deadline(context))
        return pb.ListAccountsResponse(
            accounts=read.accounts,
            next_page_token=self._sealed(read.next_position),
            cursor=read.cursor,
            answered_from=read.answered_from,
        )

    def _opened(self, token: str, scanned: bool) -> tuple[str, int | None]:
        """A sealed page token's plain one for validation, or where a scan goes on (then
        the plain token is empty); refused when it is not the caller's or not this kind."""
        if not token:
            return "", None
        position = self._page_tokens.open(CALLER.get() or "", token)
        start = page_tokens.scan_start(position)
        if start is not None and not scanned:
            raise page_tokens.not_ours()
        return ("", start) if start is not None else (position, None)

    def _sealed(self, position: str) -> str:
        """The caller's sealed token of `position` ("" for no next page)."""
        return self._page_tokens.seal(CALLER.get() or "", position) if position else ""

    async def DeleteAccount(self, request: pb.DeleteAccountRequest, context: Context) -> pb.Account:
        """Deletes one account in StackOne."""
        account_id = validation.account_id(request.account_id)

        async def delete() -> pb.Account:
            if (scope := CALLER_OWNERS.get()) is not None:
                await self._owned.check_deletable(scope, account_id, self._deadline(context))
            deadline = self._change_deadline(request, context)
            return convert.account_message(
                await self._stackone.delete_account(account_id, deadline=deadline)
            )

        return await self._retryable.once(
            "DeleteAccount", request, pb.Account, delete, wait=self._deadline(context)
        )

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        """One connect session from StackOne, with its latest connection attempt."""
        session_id = validation.session_id(request.session_id)
        session = await sessions.fetched_session(
            self._stackone, CALLER_OWNERS.get(), session_id, self._deadline(context)
        )
        return pb.GetSessionResponse(session=session)

    async def ListConnectorProfiles(
        self, request: pb.ListConnectorProfilesRequest, context: Context
    ) -> pb.ListConnectorProfilesResponse:
        """One page of the project's connector profiles, from StackOne."""
        caller = CALLER.get() or ""
        return await self._connector_profiles.page(request, caller, self._deadline(context))

    async def StreamAccountEvents(
        self, request: pb.StreamAccountEventsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Matching events from the requested position, with bookmarks.

        Yields serialized responses (see `service.rpc.wire`), which `service.rpc.server`
        registers with no response serializer, as it does every server-streaming method.
        Events ready together go in one message where the request allows batches (see
        `Feed`); every stream that sends the same events sends the same bytes (see
        `wire.FrameCache`).
        """
        event_filter, start, per_message = validation.stream_request(request)
        del request  # the parsed request would otherwise live as long as the stream
        if (scope := CALLER_OWNERS.get()) is not None:
            event_filter = owned.narrowed_filter(scope, event_filter)
        if event_filter.is_empty:
            event_filter = MATCH_ALL  # one for every stream, not four empty sets each
        position = await resolve_start(self._log, start)
        if start.kind == "snapshot":
            first = await self._log.registry(_snapshot_query(event_filter, ""))
            if not first.complete:
                raise RegistryIncomplete()
            async for frame in self._snapshot_frames(first, event_filter, per_message):
                yield frame
            position = first.cursor
        feed = Feed(
            self._log,
            position,
            event_filter,
            bookmark_interval=self._bookmark_interval,
            stop=self._stop,
        )
        standing = auth.hold_caller(feed)  # ends the feed when the caller's entry changes
        self._metrics.subscribers.inc()
        try:
            async for item in feed:
                if isinstance(item, Bookmark):
                    yield wire.bookmark_frame(self._log.incarnation.public(item.cursor))
                    continue
                self._metrics.delivery_lag_seconds.observe(time.time() - item[0].recorded_at)
                for frame in self._frames.frames(item, per_message, event_filter):
                    if feed.interrupted:  # not one more event under the caller's old entry
                        break
                    yield frame
        finally:
            self._metrics.subscribers.dec()
            if standing is not None:
                standing.remove(feed)
        if standing is not None and standing.ended is not None:
            await context.abort(*standing.ended)
        # Everything up to the feed's position was sent or filtered out: a filtered
        # subscriber resumes past the events it skipped, not at its last bookmark.
        raise ServerDraining(self._log.incarnation.public(feed.position))

    async def _snapshot_frames(
        self, page: RegistryPage, event_filter: EventFilter, per_message: int
    ) -> AsyncIterator[bytes]:
        """The registry's matching accounts as of `page.cursor`, page after page, then
        the bookmark that ends the initial state."""
        while True:
            accounts = owned.kept_entries(event_filter.owners, page.accounts)
            for frame in wire.account_frames(accounts, per_message, self._log.incarnation):
                yield frame
            if not page.more:
                break
            after = page.accounts[-1].account_id
            page = await self._log.registry(_snapshot_query(event_filter, after, page.cursor))
        yield wire.bookmark_frame(self._log.incarnation.public(page.cursor), initial_state_end=True)


def _snapshot_query(
    event_filter: EventFilter, after: str, as_of: int | None = None
) -> RegistryQuery:
    """A page of a snapshot: the stream's filters but for event types, which accounts lack."""
    return RegistryQuery(
        origin_owner_ids=event_filter.origin_owner_ids,
        providers=event_filter.providers,
        account_ids=event_filter.account_ids,
        as_of=as_of,
        after_account=after,
        limit=REGISTRY_PAGE_LIMIT,
    )
