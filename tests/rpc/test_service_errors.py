"""Error paths of the gRPC API: clear statuses, before or instead of upstream calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from google.rpc import error_details_pb2

from service.emulator import EmulatorConfig, build_emulator_app
from service.runtime import running
from service.web import listening
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.support import details_of, make_settings

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def serve_against(
    tmp_path: Path, base_url: str, api_key: str = "key", **overrides: object
) -> AsyncIterator[pb_grpc.ConnectServiceAsyncStub]:
    """A service using a given StackOne base URL and key, with a client stub."""
    settings = make_settings(tmp_path, api_key=api_key, base_url=base_url, **overrides)
    async with running(settings) as runtime, grpc.aio.insecure_channel(runtime.grpc_target) as ch:
        yield pb_grpc.ConnectServiceStub(ch)


async def test_missing_owner_fields_are_invalid_argument_naming_each_field(
    stub: pb_grpc.ConnectServiceAsyncStub,
) -> None:
    """CreateSession without owner id and name fails with one violation per field."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSession(pb.CreateSessionRequest(origin_username="x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "origin_owner_id" in (caught.value.details() or "")
    violations = details_of(caught.value, error_details_pb2.BadRequest)
    assert [v.field for v in violations[0].field_violations] == [  # type: ignore[attr-defined]
        "origin_owner_id",
        "origin_owner_name",
    ]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"provider": "Bad Provider!"}, "provider"),
        ({"categories": ["hris", "astrology"]}, "categories[1]"),
        ({"expires_in": 0}, "expires_in"),
        ({"label": "x" * 300}, "label"),
    ],
)
async def test_bad_session_fields_are_invalid_argument(
    stub: pb_grpc.ConnectServiceAsyncStub, request_fields: dict[str, object], field: str
) -> None:
    """Malformed optional fields are refused with the field named."""
    request = pb.CreateSessionRequest(origin_owner_id="o", origin_owner_name="O", **request_fields)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSession(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = details_of(caught.value, error_details_pb2.BadRequest)
    assert field in [v.field for v in violations[0].field_violations]  # type: ignore[attr-defined]


async def test_account_calls_need_an_account_id(stub: pb_grpc.ConnectServiceAsyncStub) -> None:
    """GetAccount and DeleteAccount without an id are INVALID_ARGUMENT naming account_id."""
    for call in (
        stub.GetAccount(pb.GetAccountRequest()),
        stub.DeleteAccount(pb.DeleteAccountRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "account_id" in (caught.value.details() or "")


async def test_an_unknown_account_is_not_found(stub: pb_grpc.ConnectServiceAsyncStub) -> None:
    """GetAccount of an id StackOne does not know is NOT_FOUND with the id in the message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetAccount(pb.GetAccountRequest(account_id="999000"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "999000" in (caught.value.details() or "")


async def test_list_accounts_checks_page_size_and_token(
    stub: pb_grpc.ConnectServiceAsyncStub,
) -> None:
    """A page size over 100 and a made-up page token are INVALID_ARGUMENT."""
    for request in (pb.ListAccountsRequest(page_size=500), pb.ListAccountsRequest(page_token="zz")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListAccounts(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_cursor_errors(stub: pb_grpc.ConnectServiceAsyncStub) -> None:
    """A cursor that is not one is INVALID_ARGUMENT; one ahead of the log is OUT_OF_RANGE."""
    for cursor, code in (
        ("abc", grpc.StatusCode.INVALID_ARGUMENT),
        ("42", grpc.StatusCode.OUT_OF_RANGE),
    ):
        stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(after_cursor=cursor))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert caught.value.code() == code


async def test_a_rejected_api_key_names_the_setting_to_fix(tmp_path: Path) -> None:
    """With a wrong StackOne key, calls fail FAILED_PRECONDITION naming STACKONE_CONNECT_API_KEY."""
    emulator = build_emulator_app(
        EmulatorConfig(api_key="right", webhook_url=None, webhook_secret=None)
    )
    async with (
        listening(emulator, "127.0.0.1", 0) as upstream,
        serve_against(tmp_path, upstream.base_url, api_key="wrong") as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateSession(
                pb.CreateSessionRequest(origin_owner_id="o", origin_owner_name="O")
            )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "STACKONE_CONNECT_API_KEY" in (caught.value.details() or "")


def _upstream(behaviour: str) -> web.Application:
    """A real HTTP server that fails the way StackOne can: 503s, or never answering."""

    async def handler(request: web.Request) -> web.Response:
        if behaviour == "hang":
            await asyncio.sleep(30)
        return web.json_response({"statusCode": 503, "message": "Service Unavailable"}, status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_upstream_5xx_is_unavailable(tmp_path: Path) -> None:
    """StackOne answering 503 to every call gives UNAVAILABLE."""
    async with (
        listening(_upstream("503"), "127.0.0.1", 0) as upstream,
        serve_against(tmp_path, upstream.base_url) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetAccount(pb.GetAccountRequest(account_id="1"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "StackOne" in (caught.value.details() or "")


async def test_an_upstream_timeout_is_unavailable_within_the_configured_timeout(
    tmp_path: Path,
) -> None:
    """A StackOne that never answers gives UNAVAILABLE once the upstream timeout passes."""
    async with (
        listening(_upstream("hang"), "127.0.0.1", 0, shutdown_timeout=0.1) as upstream,
        serve_against(tmp_path, upstream.base_url, upstream_timeout=0.5) as stub,
    ):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetAccount(pb.GetAccountRequest(account_id="1"))
        elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert elapsed < 3


async def test_the_callers_deadline_bounds_the_upstream_call(tmp_path: Path) -> None:
    """With a 0.5 s deadline and a hanging StackOne, the call ends at the deadline."""
    async with (
        listening(_upstream("hang"), "127.0.0.1", 0, shutdown_timeout=0.1) as upstream,
        serve_against(tmp_path, upstream.base_url) as stub,
    ):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateSession(
                pb.CreateSessionRequest(origin_owner_id="o", origin_owner_name="O"), timeout=0.5
            )
        elapsed = time.monotonic() - started
    assert caught.value.code() in {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
    assert elapsed < 2
