"""The whole path over real sockets: gRPC, the emulator, signed webhooks, the event log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from service.events.model import LogBounds
from service.runtime import Runtime
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.streams import attached, events_until_caught_up, next_event, position, subscribed

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]  # the service fixture runs on each


async def link_account(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator: httpx.AsyncClient, owner: str, provider: str
) -> str:
    """Creates a session and completes it in the emulator; returns the new account id."""
    session = await stub.CreateSession(
        pb.CreateSessionRequest(
            origin_owner_id=owner, origin_owner_name=f"{owner} Inc", provider=provider
        )
    )
    response = await emulator.post("/emulator/link", json={"token": session.token})
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    return account_id


async def test_session_link_webhook_stream_get_delete(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """A linked account reaches a live subscriber as account.created, then account.deleted."""
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    await attached(stream)

    session = await stub.CreateSession(
        pb.CreateSessionRequest(
            origin_owner_id="tenant-5521",
            origin_owner_name="Bluefin Logistics",
            provider="hibob",
            categories=["hris"],
            expires_in=600,
        )
    )
    assert session.token
    assert session.token in session.auth_link_url
    assert session.expires_at.ToDatetime(UTC) > datetime.now(UTC)
    assert list(session.categories) == ["hris"]
    linked = await emulator_http.post("/emulator/link", json={"token": session.token})
    account_id = linked.json()["id"]

    created = await next_event(stream)
    assert (created.type, created.account.id) == ("account.created", account_id)
    assert created.account.origin_owner_id == "tenant-5521"
    assert created.account.status == pb.ACCOUNT_STATUS_ACTIVE
    assert created.verification == pb.VERIFICATION_VERIFIED
    assert created.source == pb.EVENT_SOURCE_WEBHOOK
    assert created.cursor
    assert created.event_id

    account = await stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
    assert account.status == pb.ACCOUNT_STATUS_ACTIVE
    assert (account.provider, account.origin_owner_name) == ("hibob", "Bluefin Logistics")

    await stub.DeleteAccount(pb.DeleteAccountRequest(account_id=account_id))
    deleted = await next_event(stream)
    assert (deleted.type, deleted.account.id) == ("account.deleted", account_id)
    assert int(deleted.cursor) > int(created.cursor)
    stream.cancel()


async def recorded_through(service: Runtime, cursor: int) -> LogBounds:
    """Waits until the log's latest cursor reaches `cursor` (deliveries and verification
    are asynchronous)."""
    async with asyncio.timeout(10):
        while (bounds := await service.event_log.bounds()).latest < cursor:
            await service.event_log.wait_for_append(bounds.latest, timeout=5)
    return bounds


async def test_a_resumed_subscriber_gets_exactly_the_missed_events_in_order(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """Disconnect after two events, miss three, resume with the last cursor: those three."""
    async with subscribed(service.grpc_target) as first:
        seen = [await link_account(stub, emulator_http, f"owner-a{i}", "hibob") for i in range(2)]
        received = [await next_event(first) for _ in range(2)]
    assert [event.account.id for event in received] == seen
    last_cursor = received[-1].cursor

    missed = [await link_account(stub, emulator_http, f"owner-b{i}", "personio") for i in range(2)]
    # Recorded before the update, or the verifier would fold it into the creation.
    await recorded_through(service, position(last_cursor) + 2)
    await emulator_http.patch(f"/emulator/accounts/{missed[0]}", json={"status": "error"})
    bounds = await recorded_through(service, position(last_cursor) + 3)

    resumed = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(after_cursor=last_cursor))
    events = await events_until_caught_up(resumed, str(bounds.latest))
    assert [(event.type, event.account.id) for event in events] == [
        ("account.created", missed[0]),
        ("account.created", missed[1]),
        ("account.updated", missed[0]),
    ]
    assert [int(event.cursor) for event in events] == list(
        range(int(last_cursor) + 1, int(last_cursor) + 4)
    )
    assert events[-1].account.status == pb.ACCOUNT_STATUS_ERROR
    resumed.cancel()


async def test_filtered_streams_get_only_matching_events_and_advancing_bookmarks(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """A provider filter passes only that provider; bookmarks move past skipped events."""
    filtered = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(providers=["personio"]))
    start = await attached(filtered)
    await link_account(stub, emulator_http, "o1", "hibob")
    wanted = await link_account(stub, emulator_http, "o2", "personio")
    event = await next_event(filtered)
    assert (event.account.id, event.account.provider) == (wanted, "personio")
    await link_account(stub, emulator_http, "o3", "hibob")
    bounds = await recorded_through(service, position(start) + 3)
    assert await events_until_caught_up(filtered, str(bounds.latest)) == []
    filtered.cancel()
