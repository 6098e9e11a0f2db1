"""Time from another clock is clamped, never waited for: a receipt time ahead of ours (a
replica's clock), a webhook's event date in the future, StackOne's `updated_at` ahead."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.protobuf.empty_pb2 import Empty

from service.events.model import InboxEntry, Webhook
from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.streams import next_event
from tests.harness.support import LogBackend, deliver, make_settings, webhook

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]
A_DAY = 86_400.0


async def test_a_webhook_received_by_a_clock_a_day_ahead_is_recorded_at_once(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub
) -> None:
    """An inbox entry whose receipt time is a day ahead (written by a replica whose clock
    runs ahead) is verified and recorded within seconds, not when that day comes."""
    ahead = Webhook("evt-ahead", "account.updated", "acct-ahead", "hibob", "tenant-1")
    await service.event_log.accept(InboxEntry(0, ahead, time.time() + A_DAY, b"{}"))
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_earliest=Empty()))
    event = await next_event(stream, timeout=10)
    stream.cancel()
    assert event.event_id == "evt-ahead"


async def test_a_webhooks_future_event_date_is_clamped_to_its_receipt(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub
) -> None:
    """A signed webhook dated in the year 2999 records an event whose `occurred_at` is no
    later than its `received_at`."""
    body = webhook("account.deleted", event_date="2999-01-01T00:00:00Z")
    async with httpx.AsyncClient(base_url=service.gateway.base_url, timeout=5) as http:
        assert (await deliver(http, body)).status_code == 200
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_earliest=Empty()))
    event = await next_event(stream)
    stream.cancel()
    assert event.occurred_at.ToDatetime() <= event.received_at.ToDatetime()


async def test_an_account_stackone_dates_a_day_ahead_is_reconciled_at_once(
    tmp_path: Path, backend: LogBackend
) -> None:
    """An account StackOne lists with an `updated_at` a day ahead of our clock is
    recorded by the next reconciliation sweep, though the grace for in-flight webhooks is
    ten minutes: a time ahead of now says nothing of how recent the change is."""
    settings = make_settings(
        tmp_path, reconcile_interval=0.05, reconcile_grace=600, **backend.settings()
    )
    async with running(settings) as runtime:
        assert runtime.emulator is not None
        ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        account = {"id": "acct-ahead", "provider": "hibob", "status": "active",
                   "origin_owner_id": "t-1", "updated_at": ahead}  # fmt: skip
        async with httpx.AsyncClient(base_url=runtime.emulator.base_url, timeout=5) as emulator:
            fault = {"path_prefix": "/accounts", "body": orjson.dumps([account]).decode()}
            assert (await emulator.post("/emulator/faults", json=fault)).status_code == 201
        async with grpc.aio.insecure_channel(runtime.grpc_target) as channel:
            stub = pb_grpc.ConnectServiceStub(channel)
            stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_earliest=Empty()))
            event = await next_event(stream, timeout=10)
            stream.cancel()
    assert (event.account.id, event.source) == ("acct-ahead", pb.EVENT_SOURCE_RECONCILIATION)
