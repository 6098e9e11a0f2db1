"""`Client`: every RPC of stackone-connect as an async method with keyword arguments."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from stackone_connect_client.connection import Connection
from stackone_connect_client.consume import Consumption
from stackone_connect_client.cursors import CursorStore
from stackone_connect_client.watch import Backoff, EventWatch, Retry, Start

DEFAULT_TIMEOUT = 10.0  # seconds; a call's deadline unless it is given its own
# CreateSession and DeleteAccount carry a request id, so these failures are retried: the
# service answers a retry with the first call's result (AIP-155).
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
RETRY_ATTEMPTS = 4
RETRY_FIRST_WAIT = 0.2  # seconds, doubling
_Answer = TypeVar("_Answer")
WATCH_BATCH = 200  # events per message while a watch catches up


class Client:
    """A client of the service. Failed calls raise `grpc.aio.AioRpcError`.

    Build it with `Client.connect(...)` (it owns the channel: use `async with` or
    `close()`), or over a channel of your own with `Client(channel, token=...)`.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = channel
        self._metadata = Connection(token=token).metadata

    @classmethod
    def on_stub(
        cls,
        stub: pb_grpc.ConnectServiceAsyncStub,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Client:
        """A client that calls through `stub`, whose channel stays its owner's to close."""
        client = cls.__new__(cls)
        client.stub, client.timeout, client._channel = stub, timeout, None
        client._metadata = Connection(token=token).metadata
        return client

    @classmethod
    def connect(
        cls,
        target: str | None = None,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Client:
        """A client with a channel of its own; TLS with `ca_file`, mutual TLS with
        `cert_file` and `key_file`. Unset, `target` and `token` come from
        `STACKONE_CONNECT_TARGET` and `STACKONE_CONNECT_TOKEN`, as for the CLI."""
        default = Connection.from_environment()
        connection = Connection(
            target=target or default.target,
            token=token or default.token,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
        return cls.over(connection, timeout=timeout)

    @classmethod
    def over(cls, connection: Connection, *, timeout: float = DEFAULT_TIMEOUT) -> Client:
        """A client with a channel of its own, as `connection` describes."""
        return cls(connection.channel(), token=connection.token, timeout=timeout)

    async def close(self) -> None:
        """Closes the channel (and so every call and watch on it), if the client owns it."""
        if self._channel is not None:
            await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def create_session(
        self,
        *,
        origin_owner_id: str,
        origin_owner_name: str,
        origin_username: str = "",
        provider: str = "",
        categories: Iterable[str] = (),
        expires_in: int | None = None,
        account_id: str = "",
        label: str = "",
        metadata: Mapping[str, Any] | None = None,
        multiple: bool = False,
        type: str = "",  # the field's name in the API
        provider_version: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.Session:
        """A fresh connect session for the Hub, with an Auth Link (see the proto). Retried
        on UNAVAILABLE and DEADLINE_EXCEEDED under one `request_id` (a new UUID unless
        given), so a retry never mints a second session; `timeout` is each attempt's."""
        request = pb.CreateSessionRequest(
            origin_owner_id=origin_owner_id,
            origin_owner_name=origin_owner_name,
            origin_username=origin_username,
            provider=provider,
            categories=categories,
            expires_in=expires_in,
            account_id=account_id,
            label=label,
            multiple=multiple,
            type=type,
            provider_version=provider_version,
            request_id=request_id or str(uuid.uuid4()),
        )
        if metadata is not None:
            request.metadata.update(metadata)
        return await _retried(lambda: self.stub.CreateSession(request, **self._call(timeout)))

    async def get_account(
        self,
        *,
        account_id: str,
        read_from: pb.ReadFrom.ValueType = pb.READ_FROM_UNSPECIFIED,
        timeout: float | None = None,
    ) -> pb.Account:
        """One account, from StackOne or (`READ_FROM_REGISTRY`) the service's registry."""
        request = pb.GetAccountRequest(account_id=account_id, read_from=read_from)
        return await self.stub.GetAccount(request, **self._call(timeout))

    async def delete_account(
        self, *, account_id: str, request_id: str | None = None, timeout: float | None = None
    ) -> pb.Account:
        """Deletes (unlinks) an account in StackOne; returns it as it was deleted. Retried
        as `create_session` is, under one `request_id`."""
        request = pb.DeleteAccountRequest(
            account_id=account_id, request_id=request_id or str(uuid.uuid4())
        )
        return await _retried(lambda: self.stub.DeleteAccount(request, **self._call(timeout)))

    def list_accounts(
        self,
        *,
        origin_owner_ids: Iterable[str] = (),
        providers: Iterable[str] = (),
        account_ids: Iterable[str] = (),
        statuses: Iterable[str] = (),
        read_from: pb.ReadFrom.ValueType = pb.READ_FROM_UNSPECIFIED,
        page_size: int = 100,
        timeout: float | None = None,
    ) -> AccountListing:
        """Every matching account, page after page (`timeout` is each page's deadline)."""
        request = pb.ListAccountsRequest(
            origin_owner_ids=origin_owner_ids,
            providers=providers,
            account_ids=account_ids,
            statuses=statuses,
            read_from=read_from,
            page_size=page_size,
        )
        return AccountListing(self, request, timeout)

    def watch(
        self,
        *,
        providers: Iterable[str] = (),
        origin_owner_ids: Iterable[str] = (),
        account_ids: Iterable[str] = (),
        event_types: Iterable[str] = (),
        start: Start = "now",
        after_cursor: str | None = None,
        cursor_store: CursorStore | None = None,
        max_events_per_message: int = WATCH_BATCH,
        backoff: Backoff | None = None,
        on_retry: Callable[[Retry], None] | None = None,
        bookmarks: bool = False,
    ) -> EventWatch:
        """The matching account events, for as long as it is iterated, resuming by itself
        (`stackone_connect_client.watch` tells how).

        Args:
            start: where a new subscriber starts: `now`, `earliest` (every event retained),
                or `snapshot` (every matching account as it is, then `SnapshotEnd`, then
                the events after it).
            after_cursor: start after this cursor instead.
            cursor_store: where the cursor is kept; a cursor it holds wins over `start`
                and `after_cursor`, so a restarted subscriber continues.
            on_retry: called before each wait to reconnect (for logs).
            bookmarks: also yield the stream's bookmarks (`pb.Bookmark`): the first says
                the watch is attached, later ones carry the cursor read up to.
        """
        filters = pb.StreamAccountEventsRequest(
            providers=providers,
            origin_owner_ids=origin_owner_ids,
            account_ids=account_ids,
            event_types=event_types,
            max_events_per_message=max_events_per_message,
        )
        return EventWatch(
            self.stub,
            filters,
            metadata=self._metadata,
            start=start,
            after_cursor=after_cursor,
            cursor_store=cursor_store,
            backoff=backoff or Backoff(),
            on_retry=on_retry,
            bookmarks=bookmarks,
        )

    def consume(self, name: str, *, max_outstanding: int = 0) -> Consumption:
        """The deliveries of the subscription `name` (see `stackone_connect_client.consume`);
        `max_outstanding` bounds the deliveries held unacknowledged (0: the server's 100)."""
        return Consumption(
            self.stub, name, max_outstanding=max_outstanding, metadata=self._metadata
        )

    async def create_subscription(
        self,
        name: str,
        *,
        providers: Iterable[str] = (),
        origin_owner_ids: Iterable[str] = (),
        account_ids: Iterable[str] = (),
        event_types: Iterable[str] = (),
        start: Start = "now",
        after_cursor: str | None = None,
        ack_deadline_seconds: int = 0,
        max_deliveries: int = 0,
        timeout: float | None = None,
    ) -> pb.Subscription:
        """A new subscription of yours; `start` is `now` or `earliest` (or `after_cursor`)."""
        subscription = pb.Subscription(
            name=name,
            providers=providers,
            origin_owner_ids=origin_owner_ids,
            account_ids=account_ids,
            event_types=event_types,
            ack_deadline_seconds=ack_deadline_seconds,
            max_deliveries=max_deliveries,
        )
        where = pb.SubscriptionStart()
        if after_cursor is not None:
            where.after_cursor = after_cursor
        elif start == "earliest":
            where.from_earliest.SetInParent()
        request = pb.CreateSubscriptionRequest(subscription=subscription, start=where)
        response = await self.stub.CreateSubscription(request, **self._call(timeout))
        return response.subscription

    async def get_subscription(
        self, name: str, *, timeout: float | None = None
    ) -> pb.GetSubscriptionResponse:
        """One subscription of yours with its state (position, lag, parked events)."""
        request = pb.GetSubscriptionRequest(name=name)
        return await self.stub.GetSubscription(request, **self._call(timeout))

    async def list_subscriptions(self, *, timeout: float | None = None) -> list[pb.Subscription]:
        """Your subscriptions, by name."""
        request = pb.ListSubscriptionsRequest()
        response = await self.stub.ListSubscriptions(request, **self._call(timeout))
        return list(response.subscriptions)

    async def update_subscription(
        self,
        name: str,
        *,
        ack_deadline_seconds: int = 0,
        max_deliveries: int = 0,
        redrive_parked: bool = False,
        timeout: float | None = None,
    ) -> pb.Subscription:
        """New delivery settings (0 keeps one); `redrive_parked` delivers the parked again."""
        request = pb.UpdateSubscriptionRequest(
            name=name,
            ack_deadline_seconds=ack_deadline_seconds,
            max_deliveries=max_deliveries,
            redrive_parked=redrive_parked,
        )
        response = await self.stub.UpdateSubscription(request, **self._call(timeout))
        return response.subscription

    async def delete_subscription(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes a subscription of yours."""
        request = pb.DeleteSubscriptionRequest(name=name)
        await self.stub.DeleteSubscription(request, **self._call(timeout))

    async def seek_subscription(
        self,
        name: str,
        *,
        after_cursor: str | None = None,
        time: datetime | None = None,
        timeout: float | None = None,
    ) -> str:
        """Moves a subscription after a cursor or to a time; returns its new position."""
        request = pb.SeekSubscriptionRequest(name=name)
        if after_cursor is not None:
            request.after_cursor = after_cursor
        elif time is not None:
            request.time.FromDatetime(time)
        response = await self.stub.SeekSubscription(request, **self._call(timeout))
        return response.position

    def _call(self, timeout: float | None) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": self.timeout if timeout is None else timeout}


async def _retried(call: Callable[[], Awaitable[_Answer]]) -> _Answer:
    """`call`'s answer, asked again (same request, same request id) after a failure
    the service may not have answered for (UNAVAILABLE, DEADLINE_EXCEEDED)."""
    wait = RETRY_FIRST_WAIT
    for _ in range(RETRY_ATTEMPTS - 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRIED_CODES:
                raise
        await asyncio.sleep(wait)
        wait *= 2
    return await call()


class AccountListing:
    """The accounts of a listing, as an async iterator over every page. Once the first page
    is read, `cursor` and `answered_from` tell what the listing reflects (from the
    registry: watch with `after_cursor=listing.cursor` to follow the changes after it)."""

    def __init__(self, client: Client, request: pb.ListAccountsRequest, timeout: float | None):
        self._client = client
        self._request = request
        self._timeout = timeout
        self.cursor = ""
        self.answered_from: pb.ReadFrom.ValueType = pb.READ_FROM_UNSPECIFIED

    def __aiter__(self) -> AsyncIterator[pb.Account]:
        return self._accounts()

    async def _accounts(self) -> AsyncIterator[pb.Account]:
        request = pb.ListAccountsRequest()
        request.CopyFrom(self._request)
        first = True
        while True:
            page = await self._client.stub.ListAccounts(
                request, **self._client._call(self._timeout)
            )
            if first:
                self.cursor, self.answered_from, first = page.cursor, page.answered_from, False
            for account in page.accounts:
                yield account
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token
