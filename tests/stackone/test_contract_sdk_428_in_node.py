"""The emulator and the client against StackOne's own SDK (tests/sdk, run with Node).

`make install` installs the pinned `@stackone/stackone-client-ts` there with `npm ci`;
`tests/sdk/conformance.mjs` drives the emulator with it and checks what our client sent
with its schemas. These tests fail, rather than skip, without Node or the SDK: the
contract would go unchecked.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio

from service.emulator import EmulatorConfig, build_emulator_app
from service.emulator.state import SDK_428_SHAPES
from service.rpc.validation import CATEGORIES
from service.runtime import Runtime
from service.stackone.client import StackOneClient
from service.web import ListeningApp, listening
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import run_to_end
from tests.harness.support import every_field_session

pytestmark = pytest.mark.asyncio
SDK_DIR = Path(__file__).parents[1] / "sdk"
SDK_PACKAGE = SDK_DIR / "node_modules" / "@stackone" / "stackone-client-ts"
API_KEY = "conformance-key"
# The SDK here is 4.28.0, the only version npm serves: the service's later additions
# (the `scheduling` category, 4.32.2) are checked by tests/stackone/test_contract_sdk_434.py.
SDK_428_CATEGORIES = CATEGORIES - {"scheduling"}


async def conformance(mode: str, base_url: str, api_key: str) -> tuple[str, int]:
    """Runs `conformance.mjs MODE`; fails the test with its report unless every check
    passed; returns the report and how many checks passed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for the SDK conformance suite (node not on PATH)")
    if not SDK_PACKAGE.is_dir():
        pytest.fail(f"StackOne's SDK is not installed in {SDK_DIR}: run `make install`")
    command = [node, "conformance.mjs", mode, base_url, api_key]
    code, out, err = await run_to_end(command, cwd=SDK_DIR, timeout=60)
    report = out + err
    assert code == 0, report
    closing = re.search(r"^(\d+) passed, 0 failed$", report, re.MULTILINE)
    assert closing is not None, report
    return report, int(closing[1])


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[ListeningApp]:
    """The emulator alone, on a free loopback port, answering in the SDK 4.28 shapes."""
    config = EmulatorConfig(api_key=API_KEY, sdk_shapes=SDK_428_SHAPES)
    async with listening(build_emulator_app(config), "127.0.0.1", 0) as app:
        yield app


async def test_the_sdk_reads_every_answer_of_the_emulator(emulator: ListeningApp) -> None:
    """Sessions, accounts, listings, deletion and every error body parse with the SDK."""
    report, passed = await conformance("responses", emulator.base_url, API_KEY)
    assert passed >= 22, report


async def test_our_client_sends_what_the_sdk_would_send(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub, emulator_http: httpx.AsyncClient
) -> None:
    """Every RPC's StackOne request, with every field set, passes the SDK's schemas."""
    session = await stub.CreateSession(
        every_field_session(SDK_428_CATEGORIES, plan="growth", seats=40)
    )
    account_id = (await emulator_http.post("/emulator/link", json={"token": session.token})).json()[
        "id"
    ]
    await stub.CreateSession(
        pb.CreateSessionRequest(
            origin_owner_id="tenant-5521", origin_owner_name="Bluefin", account_id=account_id
        )
    )
    first = await stub.ListAccounts(
        pb.ListAccountsRequest(
            origin_owner_ids=["tenant-5521", "tenant-2"],
            providers=["hibob", "personio"],
            account_ids=[account_id],
            statuses=["active", "error"],
            page_size=1,
        )
    )
    await stub.ListAccounts(pb.ListAccountsRequest(page_token=first.next_page_token))
    await stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
    await stub.DeleteAccount(pb.DeleteAccountRequest(account_id=account_id))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetAccount(pb.GetAccountRequest(account_id="a/b c.%"))
    # No RPC authenticates a token; the client can, and must do it StackOne's way too.
    assert service.emulator is not None
    key = service.settings.emulator_api_key
    async with StackOneClient(service.emulator.base_url, key) as client:
        await client.authenticate_connect_session(session.token)

    report, passed = await conformance("requests", service.emulator.base_url, key)
    assert passed >= 10, report
    assert "ok - our client sent every field of ConnectSessionCreate" in report
