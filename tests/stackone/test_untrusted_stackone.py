"""What StackOne sends is untrusted: odd, huge or hostile answers give a bounded error."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import grpc
import httpx
import orjson
import pytest
from google.rpc import error_details_pb2

from service.stackone.client import MAX_RESPONSE_BYTES, retry_after_seconds
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.support import details_of

pytestmark = pytest.mark.asyncio
SESSION = pb.CreateSessionRequest(origin_owner_id="t-1", origin_owner_name="Acme")
ACCOUNT = {"id": "acc-1", "provider": "hibob", "status": "active"}


async def answer(emulator: httpx.AsyncClient, path: str, **fault: Any) -> None:
    """Makes the emulator answer requests under `path` as `fault` says."""
    response = await emulator.post("/emulator/faults", json={"path_prefix": path, **fault})
    assert response.status_code == 201, response.text


async def failure(call: Any) -> grpc.aio.AioRpcError:
    """The error a call ends with, checking it came quickly and its details are small."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert time.monotonic() - started < 5
    assert len(error.details() or "") <= 1024
    trailers: Any = error.trailing_metadata() or ()
    assert sum(len(key) + len(value) for key, value in trailers) <= 4096
    return error


async def test_an_answer_past_the_size_bound_is_unavailable(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """A body larger than MAX_RESPONSE_BYTES is refused as it streams in."""
    await answer(emulator_http, "/accounts/", body="0", repeat=MAX_RESPONSE_BYTES + 1)
    error = await failure(stub.GetAccount(pb.GetAccountRequest(account_id="acc-1")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"more than {MAX_RESPONSE_BYTES} bytes" in (error.details() or "")


async def test_json_nested_past_any_sane_depth_is_unavailable(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """100,000 nested arrays are not JSON this client reads: UNAVAILABLE, not INTERNAL."""
    await answer(emulator_http, "/accounts", body="[" * 100_000 + "]" * 100_000)
    error = await failure(stub.ListAccounts(pb.ListAccountsRequest()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "not JSON this client reads" in (error.details() or "")


@pytest.mark.parametrize(
    "updated_at",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59Z"],
)
async def test_out_of_range_dates_are_unavailable(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient, updated_at: str
) -> None:
    """Dates that would overflow a Timestamp are refused, naming the field."""
    body = orjson.dumps({**ACCOUNT, "updated_at": updated_at}).decode()
    await answer(emulator_http, "/accounts/", body=body)
    error = await failure(stub.GetAccount(pb.GetAccountRequest(account_id="acc-1")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "updated_at" in (error.details() or "")


@pytest.mark.parametrize("account_id", ["..", ".", "x" * 300, "a\nb"])
async def test_listed_ids_that_could_change_a_path_are_unavailable(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient, account_id: str
) -> None:
    """An account id that is dots, too long or unprintable never reaches a URL or a log."""
    body = orjson.dumps([{**ACCOUNT, "id": account_id}]).decode()
    await answer(emulator_http, "/accounts", method="GET", body=body)
    error = await failure(stub.ListAccounts(pb.ListAccountsRequest()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "; id: " in (error.details() or "")


@pytest.mark.parametrize("account_id", [".", ".."])
async def test_a_dot_segment_id_stays_inside_the_account_path(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient, account_id: str
) -> None:
    """GetAccount('.') asks for the account '.', never for the listing it would resolve to."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
    assert caught.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    calls = (await emulator_http.get("/emulator/stats")).json()["calls"]
    assert set(calls) <= {"GET /accounts/{account_id}"}


async def test_a_huge_error_message_is_cut_to_a_bounded_one(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """StackOne's 10 KB error message reaches the caller as at most 300 characters."""
    body = orjson.dumps({"statusCode": 400, "message": "bad " * 2500}).decode()
    await answer(emulator_http, "/connect_sessions", status=400, body=body)
    error = await failure(stub.CreateSession(SESSION))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad bad" in (error.details() or "")
    assert len(error.details() or "") < 600


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay a failed call carries, if any."""
    for info in details_of(error, error_details_pb2.RetryInfo):
        delay: float = info.retry_delay.ToTimedelta().total_seconds()  # type: ignore[attr-defined]
        return delay
    return None


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("inf", None), ("nan", None), ("-5", None), ("1e308", None), ("99999999", 300.0)],
)
async def test_odd_retry_after_values_are_ignored_or_capped(
    stub: pb_grpc.ConnectServiceAsyncStub,
    emulator_http: httpx.AsyncClient,
    retry_after: str,
    expected: float | None,
) -> None:
    """A Retry-After that is not a sane number of seconds never makes anyone wait on it."""
    await answer(emulator_http, "/connect_sessions", status=429, retry_after=retry_after)
    error = await failure(stub.CreateSession(SESSION, timeout=5))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _retry_delay(error) == expected


async def test_retry_after_as_an_http_date_counts_from_now() -> None:
    """An HTTP-date Retry-After is the seconds until then, within [0, 300]."""
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0
    assert retry_after_seconds(format_datetime(now + timedelta(days=9), usegmt=True), now) == 300
    assert retry_after_seconds("٣٠", now) is None, "ASCII digits only"


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        (orjson.loads("{" + '"k": {' * 20 + "}" * 21), "nest at most 16 levels"),
        ({"big": "x" * 70_000}, "at most 65536 bytes"),
    ],
)
async def test_session_metadata_too_deep_or_large_for_a_struct_is_unavailable(
    stub: pb_grpc.ConnectServiceAsyncStub,
    emulator_http: httpx.AsyncClient,
    metadata: dict[str, Any],
    problem: str,
) -> None:
    """Echoed metadata becomes a Struct every gRPC client must parse: bounded first."""
    session = {"id": 7, "token": "cst_x", "metadata": metadata}
    await answer(emulator_http, "/connect_sessions", body=orjson.dumps(session).decode())
    error = await failure(stub.CreateSession(SESSION))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert problem in (error.details() or "")
