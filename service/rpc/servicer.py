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
from service.api.v1 import stackone_connect_pb2 as pb
from service.events.feed import Feed, resolve_start
from service.events.log import EventLog
from service.events.model import Bookmark, EventFilter, ServerDraining
from service.metrics import Metrics
from service.rpc import validation, wire
from service.stackone.client import StackOneClient

Context = grpc.aio.ServicerContext[Any, Any]
MATCH_ALL = EventFilter()


class ConnectServicer:
    """Serves ConnectService over a StackOne client and an event log."""

    def __init__(
        self,
        stackone: StackOneClient,
        log: EventLog,
        *,
        bookmark_interval: float,
        stop: asyncio.Event,
        upstream_timeout: float,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._stackone = stackone
        self._log = log
        self._upstream_timeout = upstream_timeout
        self._bookmark_interval = bookmark_interval
        self._stop = stop
        self._frames = wire.FrameCache()

    def _deadline(self, context: Context) -> float:
        """Seconds an upstream call may take: the caller's deadline, capped by the setting."""
        remaining: float | None = context.time_remaining()  # None: no deadline
        return (
            self._upstream_timeout if remaining is None else min(remaining, self._upstream_timeout)
        )

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.Session:
        """Validates, then asks StackOne for a fresh connect session."""
        body = validation.session_create(request)
        session = await self._stackone.create_connect_session(
            body, deadline=self._deadline(context)
        )
        return convert.session_message(session, body.expires_in)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:
        """Fetches one account from StackOne."""
        account_id = validation.account_id(request.account_id)
        account = await self._stackone.get_account(account_id, deadline=self._deadline(context))
        return convert.account_message(account)

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: Context
    ) -> pb.ListAccountsResponse:
        """Fetches one page of accounts; a full page means there may be another."""
        query = validation.list_query(request)
        accounts = await self._stackone.list_accounts(query, deadline=self._deadline(context))
        full_page = len(accounts) >= query.page_size
        return pb.ListAccountsResponse(
            accounts=[convert.account_message(account) for account in accounts],
            next_page_token=validation.page_token(query.page + 1) if full_page else "",
        )

    async def DeleteAccount(self, request: pb.DeleteAccountRequest, context: Context) -> pb.Account:
        """Deletes one account in StackOne."""
        account_id = validation.account_id(request.account_id)
        account = await self._stackone.delete_account(account_id, deadline=self._deadline(context))
        return convert.account_message(account)

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
        if event_filter.is_empty:
            event_filter = MATCH_ALL  # one for every stream, not four empty sets each
        position = await resolve_start(self._log, start)
        feed = Feed(
            self._log,
            position,
            event_filter,
            bookmark_interval=self._bookmark_interval,
            stop=self._stop,
        )
        self._metrics.subscribers.inc()
        try:
            async for item in feed:
                if isinstance(item, Bookmark):
                    position = item.cursor
                    yield wire.bookmark_frame(item.cursor)
                    continue
                self._metrics.delivery_lag_seconds.observe(time.time() - item[0].recorded_at)
                position = item[-1].cursor
                for frame in self._frames.frames(item, per_message, event_filter):
                    yield frame
        finally:
            self._metrics.subscribers.dec()
        raise ServerDraining(position)
