"""Consuming a subscription the service keeps: `async for delivery in client.consume(name)`,
then `await delivery.ack()` (done) or `await delivery.nack(delay)` (deliver it again later).

Deliveries are at least once: one not acknowledged within the subscription's ack deadline,
or whose consumer goes away, is delivered again (`attempt` counts); each account's events
come to one consumer at a time, in order, the next only once the previous is acknowledged.
Leaving the loop detaches gracefully: the acks sent so far are applied, and what this
consumer still holds goes to the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpc.aio import EOF  # type: ignore[attr-defined]  # the stubs lack it

from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)
_EOF: Any = EOF  # what `read()` returns once the server ended the stream
DETACH_SECONDS = 5.0  # how long leaving waits for the server to apply the last acks


class Delivery:
    """One event handed to this consumer, to acknowledge or give back."""

    __slots__ = ("_consumption", "attempt", "delivery_id", "event")

    def __init__(self, message: pb.Delivery, consumption: Consumption) -> None:
        self.delivery_id = message.delivery_id
        self.event = message.event
        self.attempt = message.attempt
        self._consumption = consumption

    async def ack(self) -> None:
        """Done with it: it is not delivered again (once the server has the ack)."""
        ack = pb.ConsumeAck(delivery_id=self.delivery_id)
        await self._consumption.send(pb.ConsumeSubscriptionRequest(ack=ack))

    async def nack(self, delay: float = 0.0) -> None:
        """Give it back, to be delivered again after `delay` seconds (an attempt counted)."""
        nack = pb.ConsumeNack(delivery_id=self.delivery_id, delay_seconds=delay)
        await self._consumption.send(pb.ConsumeSubscriptionRequest(nack=nack))


class Consumption:
    """The deliveries of one subscription to this consumer, for as long as it is iterated.
    Failed streams raise `grpc.aio.AioRpcError` (NOT_FOUND: no such subscription of yours)."""

    def __init__(
        self,
        stub: pb_grpc.ConnectServiceAsyncStub,
        name: str,
        *,
        max_outstanding: int,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        self._stub = stub
        self._attach = pb.ConsumeAttach(name=name, max_outstanding=max_outstanding)
        self._metadata = metadata
        self._call: Any = None
        self._writing = asyncio.Lock()  # one write at a time on a stream

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._deliveries()

    async def send(self, request: pb.ConsumeSubscriptionRequest) -> None:
        """Writes an ack or a nack on the stream."""
        async with self._writing:
            await self._call.write(request)

    async def _deliveries(self) -> AsyncIterator[Delivery]:
        # No request iterator: writes are awaited, so an ack has left when `ack()` returns.
        self._call = self._stub.ConsumeSubscription(metadata=self._metadata)  # type: ignore[call-arg]
        await self.send(pb.ConsumeSubscriptionRequest(attach=self._attach))
        try:
            while True:
                response = await self._call.read()
                if response is _EOF:
                    return
                yield Delivery(response.delivery, self)
        finally:
            await self._detach()

    async def _detach(self) -> None:
        """Half-closes, so the server applies what was sent, then ends the call."""
        try:
            async with asyncio.timeout(DETACH_SECONDS):
                async with self._writing:
                    await self._call.done_writing()
                while await self._call.read() is not _EOF:
                    pass  # delivered after leaving: the server gives them to others
        except Exception as error:  # leaving: whatever state the call is in, it ends here
            _log.debug("detaching from the subscription: %s", error)
        finally:
            self._call.cancel()
