"""StackOne failing in every way the emulator can fail: each gives the documented status
within the caller's deadline."""

from __future__ import annotations

import time
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.support import details_of

pytestmark = pytest.mark.asyncio
SESSION = pb.CreateSessionRequest(origin_owner_id="t-1", origin_owner_name="Acme")
LOOK_UPS = {"path_prefix": "/accounts/", "method": "GET"}  # a fault on GET /accounts/{id}


async def inject(emulator: httpx.AsyncClient, **fault: Any) -> None:
    """Adds a fault to the emulator."""
    response = await emulator.post("/emulator/faults", json=fault)
    assert response.status_code == 201, response.text


@pytest_asyncio.fixture
async def account_id(emulator_http: httpx.AsyncClient) -> str:
    """An account that exists in the emulator."""
    spec = {"provider": "hibob", "origin_owner_id": "t-1", "origin_owner_name": "Acme"}
    created: str = (await emulator_http.post("/emulator/accounts", json=spec)).json()["id"]
    return created


async def failure(call: Any) -> tuple[grpc.aio.AioRpcError, float]:
    """Awaits a call that must fail; returns the error and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value, time.monotonic() - started


async def session_failure(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator: httpx.AsyncClient, **fault: Any
) -> tuple[grpc.aio.AioRpcError, float]:
    """CreateSession (5 s deadline) with `fault` on POST /connect_sessions, which must fail;
    returns the error and the seconds it took."""
    await inject(emulator, path_prefix="/connect_sessions", **fault)
    return await failure(stub.CreateSession(SESSION, timeout=5))


async def test_429_is_resource_exhausted_with_retry_info(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """A rate limit with Retry-After 30 s comes back at once with RetryInfo of 30 s."""
    error, elapsed = await session_failure(stub, emulator_http, status=429, retry_after=30)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    (retry,) = details_of(error, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == 30  # type: ignore[attr-defined]
    assert elapsed < 2


async def test_a_transient_5xx_on_a_read_is_retried_away(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient, account_id: str
) -> None:
    """One 503 on GET /accounts/{id} is absorbed by a retry; the caller sees the account."""
    await inject(emulator_http, **LOOK_UPS, status=503, times=1)
    account = await stub.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5)
    assert account.id == account_id


async def test_session_creation_is_not_retried(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """POST /connect_sessions is not idempotent: one 502 reaches the caller as UNAVAILABLE."""
    error, _ = await session_failure(stub, emulator_http, status=502, times=1)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 502},
        {"status": 408},
        {"reset": True},
        {"malformed": True},
    ],
    ids=["500", "502", "408", "connection-reset", "malformed-json"],
)
async def test_outages_are_unavailable(
    stub: pb_grpc.ConnectServiceAsyncStub,
    emulator_http: httpx.AsyncClient,
    account_id: str,
    fault: dict[str, Any],
) -> None:
    """Persistent server errors, resets and unreadable answers give UNAVAILABLE in time."""
    await inject(emulator_http, **LOOK_UPS, **fault)
    error, elapsed = await failure(
        stub.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5)
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "StackOne" in (error.details() or "")
    assert elapsed < 5


async def test_latency_beyond_the_deadline_ends_at_the_deadline(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """A 5 s upstream delay with a 0.5 s caller deadline ends the call at about 0.5 s."""
    await inject(emulator_http, path_prefix="/accounts", delay=5)
    error, elapsed = await failure(stub.ListAccounts(pb.ListAccountsRequest(), timeout=0.5))
    assert error.code() in {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
    assert elapsed < 1.0


async def test_retries_stop_when_waiting_would_pass_the_deadline(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient, account_id: str
) -> None:
    """503 with Retry-After 5 s and a 2 s deadline: one attempt, then UNAVAILABLE at once."""
    await inject(emulator_http, **LOOK_UPS, status=503, retry_after=5)
    error, elapsed = await failure(
        stub.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=2)
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert elapsed < 1.0, "it did not sleep towards a retry it could not finish"
    (retry,) = details_of(error, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == 5  # type: ignore[attr-defined]
