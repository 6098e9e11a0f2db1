"""Subscriptions' RPCs (`service.subscriptions`): validation in, the caller's own
subscription found (another client's is NOT_FOUND), protocol data out."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, NoReturn

import grpc

from service.events.feed import resolve_start
from service.events.log import Log
from service.events.subscriptions import (
    Filters,
    SubscriptionExists,
    SubscriptionNotFound,
    SubscriptionRecord,
)
from service.owners import CALLER_OWNERS, OwnerScope
from service.rpc import owned, validation
from service.rpc.audit import CALLER
from service.rpc.wire import event_payload
from service.subscriptions.dispatcher import Consumer, Dispatcher, State
from service.subscriptions.manager import SubscriptionManager
from stackone_connect.v1 import stackone_connect_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_ACK_DEADLINE = 30
MAX_ACK_DEADLINE = 600
DEFAULT_MAX_DELIVERIES = 5
MAX_DELIVERIES = 100
DEFAULT_MAX_OUTSTANDING = 100
MAX_OUTSTANDING = 1000
MAX_NACK_DELAY = 3600.0
SHOWN_PARKED = 100


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises


class SubscriptionRpcs:
    """The subscription methods of ConnectService, over a `SubscriptionManager` (None: the
    event log in use keeps none, and they answer UNIMPLEMENTED)."""

    def __init__(self, manager: SubscriptionManager | None, log: Log) -> None:
        self._manager = manager
        self._events = log

    async def _managed(self, context: Context) -> SubscriptionManager:
        if self._manager is None:
            await _abort(
                context,
                grpc.StatusCode.UNIMPLEMENTED,
                "subscriptions are kept on the SQLite event log only for now; use "
                "StreamAccountEvents on this deployment",
            )
        return self._manager

    async def _dispatcher(self, name: str, context: Context) -> Dispatcher:
        _check_name(name, "name")  # before it is quoted in an answer
        manager = await self._managed(context)
        try:
            return manager.get(CALLER.get() or "", name)
        except SubscriptionNotFound:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no subscription named {name!r}")

    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: Context
    ) -> pb.CreateSubscriptionResponse:
        """Stores a new subscription at its start and starts delivering it."""
        manager = await self._managed(context)
        wanted = request.subscription
        _check_name(wanted.name)
        stream = pb.StreamAccountEventsRequest(
            providers=wanted.providers,
            origin_owner_ids=wanted.origin_owner_ids,
            account_ids=wanted.account_ids,
            event_types=wanted.event_types,
        )
        which = request.start.WhichOneof("start")
        if which == "after_cursor":
            stream.after_cursor = request.start.after_cursor
        elif which == "from_earliest":
            stream.from_earliest.SetInParent()
        event_filter, start, _ = validation.stream_request(stream)
        scope = CALLER_OWNERS.get()
        if scope is not None:
            event_filter = owned.narrowed_filter(scope, event_filter)
        record = SubscriptionRecord(
            id=0,
            client=CALLER.get() or "",
            name=wanted.name,
            filters=Filters(
                tuple(sorted(event_filter.providers)),
                tuple(sorted(event_filter.origin_owner_ids)),
                tuple(sorted(event_filter.account_ids)),
                tuple(sorted(event_filter.event_types)),
            ),
            owners=None if scope is None else _patterns(scope),
            ack_deadline=float(
                _bounded("ack_deadline_seconds", wanted.ack_deadline_seconds, MAX_ACK_DEADLINE)
                or DEFAULT_ACK_DEADLINE
            ),
            max_deliveries=_bounded("max_deliveries", wanted.max_deliveries, MAX_DELIVERIES)
            or DEFAULT_MAX_DELIVERIES,
            created_at=0.0,
        )
        position = await resolve_start(self._events, start)
        try:
            created = await manager.create(record, position)
        except SubscriptionExists:
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"you already have a subscription named {wanted.name!r}; delete it or pick "
                "another name",
            )
        return pb.CreateSubscriptionResponse(subscription=_message(created))

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: Context
    ) -> pb.GetSubscriptionResponse:
        """One of the caller's subscriptions, with its position and lag."""
        dispatcher = await self._dispatcher(request.name, context)
        return pb.GetSubscriptionResponse(
            subscription=_message(dispatcher.record),
            state=self._state(dispatcher.state()),
        )

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Context
    ) -> pb.ListSubscriptionsResponse:
        """The caller's subscriptions, by name."""
        manager = await self._managed(context)
        records = manager.of_client(CALLER.get() or "")
        return pb.ListSubscriptionsResponse(subscriptions=[_message(r) for r in records])

    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, context: Context
    ) -> pb.UpdateSubscriptionResponse:
        """New delivery settings, and the parked events re-driven when asked."""
        dispatcher = await self._dispatcher(request.name, context)
        manager = await self._managed(context)
        record = dispatcher.record
        deadline = _bounded("ack_deadline_seconds", request.ack_deadline_seconds, MAX_ACK_DEADLINE)
        deliveries = _bounded("max_deliveries", request.max_deliveries, MAX_DELIVERIES)
        record = replace(
            record,
            ack_deadline=float(deadline or record.ack_deadline),
            max_deliveries=deliveries or record.max_deliveries,
        )
        await manager.store.update(record.id, record.ack_deadline, record.max_deliveries)
        dispatcher.update(record)
        if request.redrive_parked:
            await dispatcher.redrive()
        return pb.UpdateSubscriptionResponse(subscription=_message(record))

    async def DeleteSubscription(
        self, request: pb.DeleteSubscriptionRequest, context: Context
    ) -> pb.DeleteSubscriptionResponse:
        """Removes the subscription; its consumers' streams end."""
        await self._dispatcher(request.name, context)
        manager = await self._managed(context)
        await manager.delete(CALLER.get() or "", request.name)
        return pb.DeleteSubscriptionResponse()

    async def SeekSubscription(
        self, request: pb.SeekSubscriptionRequest, context: Context
    ) -> pb.SeekSubscriptionResponse:
        """Moves the subscription to a cursor or a time."""
        dispatcher = await self._dispatcher(request.name, context)
        which = request.WhichOneof("target")
        if which == "after_cursor":
            stream = pb.StreamAccountEventsRequest(after_cursor=request.after_cursor)
            _, start, _ = validation.stream_request(stream)
            position = await resolve_start(self._events, start)
        elif which == "time":
            position = await self._before(request.time.ToSeconds() + request.time.nanos / 1e9)
        else:
            raise validation.InvalidRequest(
                [validation.FieldViolation("target", "set after_cursor or time")]
            )
        await dispatcher.seek(position)
        return pb.SeekSubscriptionResponse(position=self._events.incarnation.public(position))

    async def ConsumeSubscription(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """Attaches a consumer: deliveries out, acks and nacks in."""
        first = await anext(aiter(requests), None)
        attach = None if first is None else _request(first).attach
        if attach is None or not _request(first or b"").HasField("attach"):
            raise validation.InvalidRequest(
                [validation.FieldViolation("attach", "the first message must attach")]
            )
        dispatcher = await self._dispatcher(attach.name, context)
        bound = _bounded("max_outstanding", attach.max_outstanding, MAX_OUTSTANDING)
        consumer = dispatcher.attach(bound or DEFAULT_MAX_OUTSTANDING)
        reading = asyncio.create_task(_settle(requests, dispatcher, consumer))
        try:
            while (handed := await _next_delivery(consumer, reading)) is not None:
                if handed is _LEFT:
                    return  # the consumer half-closed: its acks are applied, it leaves
                event = pb.AccountEvent.FromString(
                    event_payload(handed.event, self._events.incarnation)
                )
                delivery = pb.Delivery(
                    delivery_id=handed.delivery_id, event=event, attempt=handed.attempt
                )
                yield pb.ConsumeSubscriptionResponse(delivery=delivery).SerializeToString()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
            dispatcher.detach(consumer)
        await _abort(context, grpc.StatusCode.NOT_FOUND, "the subscription was deleted")

    async def _before(self, moment: float) -> int:
        """The cursor of the last event recorded before `moment` (the pruned-through one if
        none is retained from before it)."""
        bounds = await self._events.bounds(exact=True)
        position = bounds.pruned_through
        while True:
            events = await self._events.read(position, 1000)
            for event in events:
                if event.recorded_at >= moment:
                    return position
                position = event.cursor
            if len(events) < 1000:
                return position

    def _state(self, state: State) -> pb.SubscriptionState:
        parked = [
            pb.ParkedEvent(
                cursor=self._events.incarnation.public(p.cursor),
                account_id=p.account_id,
                attempts=p.attempts,
                parked_at=_timestamp(p.parked_at),
            )
            for p in state.parked[:SHOWN_PARKED]
        ]
        return pb.SubscriptionState(
            position=self._events.incarnation.public(state.position),
            pending=state.pending,
            outstanding_acks=state.outstanding,
            oldest_unacked_age_seconds=state.oldest_unacked_age,
            redeliveries=state.redeliveries,
            parked_count=len(state.parked),
            parked=parked,
            consumers=state.consumers,
        )


def _request(raw: bytes) -> pb.ConsumeSubscriptionRequest:
    return validation.parse(raw, pb.ConsumeSubscriptionRequest, 64 * 1024)


async def _settle(
    requests: AsyncIterator[bytes], dispatcher: Dispatcher, consumer: Consumer
) -> None:
    """Applies the consumer's acks and nacks until it stops sending."""
    async for raw in requests:
        request = _request(raw)
        which = request.WhichOneof("kind")
        if which == "ack":
            dispatcher.ack(consumer, request.ack.delivery_id)
        elif which == "nack":
            delay = min(max(request.nack.delay_seconds, 0.0), MAX_NACK_DELAY)
            dispatcher.nack(consumer, request.nack.delivery_id, delay)


_LEFT: Any = object()  # the consumer half-closed its side


async def _next_delivery(consumer: Consumer, reading: asyncio.Task[None]) -> Any:
    """The next delivery; None once the subscription is gone, `_LEFT` once the consumer
    half-closed (every ack it sent applied)."""
    taking = asyncio.ensure_future(consumer.outbox.get())
    done, _ = await asyncio.wait({taking, reading}, return_when=asyncio.FIRST_COMPLETED)
    if taking in done:
        return taking.result()
    taking.cancel()
    error = reading.exception()
    if error is not None:
        raise error
    return _LEFT


def _check_name(name: str, field: str = "subscription.name") -> None:
    if not _NAME.fullmatch(name):
        raise validation.InvalidRequest(
            [validation.FieldViolation(field, "must be 1 to 64 letters, digits, '.', '_' or '-'")]
        )


def _bounded(field: str, value: int, maximum: int) -> int:
    if value > maximum:
        raise validation.InvalidRequest(
            [validation.FieldViolation(field, f"must be at most {maximum} (0: the default)")]
        )
    return value


def _timestamp(seconds: float) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _message(record: SubscriptionRecord) -> pb.Subscription:
    return pb.Subscription(
        name=record.name,
        providers=record.filters.providers,
        origin_owner_ids=record.filters.origin_owner_ids,
        account_ids=record.filters.account_ids,
        event_types=record.filters.event_types,
        ack_deadline_seconds=int(record.ack_deadline),
        max_deliveries=record.max_deliveries,
        created_at=_timestamp(record.created_at),
    )


def _patterns(scope: OwnerScope) -> tuple[str, ...]:
    """The scope as the clients file writes it (`OwnerScope.parse` reads it back)."""
    return (*sorted(scope.exact), *(prefix + "*" for prefix in scope.prefixes))
