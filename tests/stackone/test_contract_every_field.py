"""StackOne's whole contract end to end: gRPC → client → emulator → back, and on events.

Sessions with every field, account types and status reasons, and re-connecting an
account, over the real service and its bundled emulator.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2

from service.rpc.validation import CATEGORIES
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.stackone_434 import CATEGORIES as SDK_CATEGORIES
from tests.harness.streams import StreamCall, attached, next_event
from tests.harness.support import details_of, every_field_session

pytestmark = pytest.mark.asyncio


async def session_body(emulator: httpx.AsyncClient) -> dict[str, Any]:
    """The body of the last POST /connect_sessions the emulator received."""
    recorded = (await emulator.get("/emulator/requests")).json()
    bodies = [r["body"] for r in recorded if r["path"] == "/connect_sessions"]
    body: dict[str, Any] = bodies[-1]
    return body


async def link(emulator: httpx.AsyncClient, token: str, **fields: Any) -> httpx.Response:
    """Completes a session in the emulator, as a person finishing the Hub would."""
    response = await emulator.post("/emulator/link", json={"token": token, **fields})
    assert response.status_code in (200, 201), response.text
    return response


async def linked_account(
    stub: pb_grpc.ConnectServiceAsyncStub,
    emulator: httpx.AsyncClient,
    stream: StreamCall,
    **session: Any,
) -> pb.AccountEvent:
    """Creates a session, links it, and returns the event the link produced."""
    request = pb.CreateSessionRequest(origin_owner_id="tenant-7", origin_owner_name="Acme")
    for name, value in session.items():
        setattr(request, name, value)
    created = await stub.CreateSession(request)
    await link(emulator, created.token)
    return await next_event(stream)


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields an INVALID_ARGUMENT names."""
    found = details_of(error, error_details_pb2.BadRequest)
    return [v.field for bad in found for v in bad.field_violations]  # type: ignore[attr-defined]


async def test_a_session_with_every_field_goes_to_stackone_and_comes_back_whole(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """Every CreateSession field reaches StackOne; every field StackOne returns reaches us."""
    session = await stub.CreateSession(
        every_field_session(SDK_CATEGORIES, plan="growth", seats=40, regions=["eu", "us"])
    )
    assert await session_body(emulator_http) == {
        "origin_owner_id": "tenant-5521",
        "origin_owner_name": "Bluefin Logistics",
        "origin_username": "it-admin@bluefin.example",
        "provider": "hibob",
        "categories": sorted(SDK_CATEGORIES),
        "expires_in": 3600,
        "label": "Bluefin HR",
        "metadata": {"plan": "growth", "seats": 40, "regions": ["eu", "us"]},
        "multiple": True,
        "type": "test",
        "provider_version": "2",
    }
    assert (session.type, session.label, session.origin_username) == (
        "test",
        "Bluefin HR",
        "it-admin@bluefin.example",
    )
    assert MessageToDict(session.metadata) == {
        "plan": "growth",
        "seats": 40,
        "regions": ["eu", "us"],
    }
    assert sorted(session.categories) == sorted(SDK_CATEGORIES)
    assert (session.organization_id, session.project_id) == ("41", "proj_emulator")
    assert len(session.external_trigger_token) == 36
    assert session.account_id == ""
    lifetime = session.expires_at.ToDatetime(UTC) - session.created_at.ToDatetime(UTC)
    assert lifetime == timedelta(seconds=3600)


async def test_every_category_of_the_sdk_is_accepted_and_no_other(
    stub: pb_grpc.ConnectServiceAsyncStub,
) -> None:
    """The service's categories are exactly the SDK's (4.34: `scheduling` included); a
    session type is production or test."""
    assert CATEGORIES == SDK_CATEGORIES
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateSession(
            pb.CreateSessionRequest(
                origin_owner_id="t", origin_owner_name="T", categories=["payroll"], type="dev"
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(refused.value) == ["categories[0]", "type"]


async def test_account_type_and_status_reasons_reach_rpcs_and_events(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """A test account's type, and why it went to error, are on Get/List and on its events."""
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    await attached(stream)
    created = await linked_account(stub, emulator_http, stream, type="test")
    assert (created.type, created.account.type) == ("account.created", "test")
    account_id = created.account.id

    reason = {"code": "token_refresh_failed", "description": "The refresh token was revoked"}
    stamped = {**reason, "timestamp": "2026-11-23T09:41:00.000Z"}
    await emulator_http.patch(
        f"/emulator/accounts/{account_id}", json={"status": "error", "status_reasons": [stamped]}
    )
    updated = await next_event(stream)
    assert updated.type == "account.updated"
    assert updated.verification == pb.VERIFICATION_VERIFIED
    assert updated.account.status == pb.ACCOUNT_STATUS_ERROR
    assert updated.account.type == "test"
    (carried,) = updated.account.status_reasons
    assert (carried.code, carried.description) == (reason["code"], reason["description"])
    assert carried.timestamp.ToJsonString() == "2026-11-23T09:41:00Z"

    fetched = await stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
    listed = await stub.ListAccounts(pb.ListAccountsRequest(account_ids=[account_id]))
    assert fetched == listed.accounts[0] == updated.account
    stream.cancel()


async def test_a_reconnect_session_brings_an_account_in_error_back(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """CreateSession(account_id) is bound to that account; linking it makes it active again."""
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    await attached(stream)
    account_id = (await linked_account(stub, emulator_http, stream, provider="hibob")).account.id
    broken = {"code": "insufficient_permissions", "description": "Admin scope removed"}
    await emulator_http.patch(
        f"/emulator/accounts/{account_id}", json={"status": "error", "status_reasons": [broken]}
    )
    assert (await next_event(stream)).account.status == pb.ACCOUNT_STATUS_ERROR

    session = await stub.CreateSession(
        pb.CreateSessionRequest(
            origin_owner_id="tenant-7", origin_owner_name="Acme", account_id=account_id
        )
    )
    assert session.account_id == account_id
    relinked = await link(emulator_http, session.token)
    assert (relinked.status_code, relinked.json()["id"]) == (200, account_id)

    event = await next_event(stream)
    assert (event.type, event.account.id) == ("account.updated", account_id)
    assert event.account.status == pb.ACCOUNT_STATUS_ACTIVE
    assert list(event.account.status_reasons) == []
    owned = await stub.ListAccounts(pb.ListAccountsRequest(origin_owner_ids=["tenant-7"]))
    assert [account.id for account in owned.accounts] == [account_id]
    stream.cancel()


async def test_linking_the_same_owner_and_provider_again_reopens_the_account(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """Without `multiple` StackOne re-opens the owner's account (account.updated); with it,
    a second account is created."""
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    await attached(stream)
    first = await linked_account(stub, emulator_http, stream, provider="personio", label="HR")
    again = await linked_account(stub, emulator_http, stream, provider="personio", label="HR 2")
    assert (again.type, again.account.id) == ("account.updated", first.account.id)
    assert again.account.label == "HR 2"
    other = await linked_account(stub, emulator_http, stream, provider="personio", multiple=True)
    assert other.type == "account.created"
    assert other.account.id != first.account.id
    stream.cancel()


async def test_a_reconnect_session_for_an_unknown_account_is_not_found(
    stub: pb_grpc.ConnectServiceAsyncStub,
) -> None:
    """StackOne answers 404 for a re-connect session of an account it does not have."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateSession(
            pb.CreateSessionRequest(
                origin_owner_id="tenant-7", origin_owner_name="Acme", account_id="gone"
            )
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
