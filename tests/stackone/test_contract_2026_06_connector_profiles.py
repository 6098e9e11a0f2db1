"""`ListConnectorProfiles` on a real service and StackOne's connector profiles API on its
emulator over HTTP, checked against the 2026-06 facts in tests/harness/stackone_2026_06.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
import pytest_asyncio

from service.emulator.connectors import PROFILES
from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness import stackone_2026_06 as facts
from tests.harness.support import make_settings

pytestmark = pytest.mark.asyncio
READER = "profiles-reader-token-0123456789"
ACCOUNTS = "accounts-reader-token-0123456789"


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[Runtime]:
    """The service with a client holding `connector_profiles:read` for `acme-*` only, and
    one holding `accounts:read` alone."""
    clients = tmp_path / "clients.json"
    entries = [
        {
            "name": "reader",
            "token": READER,
            "scopes": ["connector_profiles:read", "accounts:read"],
            "owners": ["acme-*"],
        },
        {"name": "accounts", "token": ACCOUNTS, "scopes": ["accounts:read"]},
    ]
    clients.write_bytes(orjson.dumps({"clients": entries}))
    async with running(make_settings(tmp_path, clients_file=clients)) as runtime:
        yield runtime


@pytest_asyncio.fixture
async def stub(service: Runtime) -> AsyncIterator[pb_grpc.ConnectServiceAsyncStub]:
    """A gRPC client of the service."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        yield pb_grpc.ConnectServiceStub(channel)


@pytest_asyncio.fixture
async def emulator(service: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the emulator's StackOne endpoints, with its API key."""
    assert service.emulator is not None
    key = service.settings.emulator_api_key
    async with httpx.AsyncClient(
        base_url=service.emulator.base_url, auth=(key, ""), timeout=10
    ) as client:
        yield client


def bearer(token: str = READER) -> tuple[tuple[str, str], ...]:
    """Call metadata with a bearer token."""
    return (("authorization", f"Bearer {token}"),)


async def every_page(
    stub: pb_grpc.ConnectServiceAsyncStub, **request: Any
) -> list[pb.ListConnectorProfilesResponse]:
    """Every page of a listing, following `next_page_token`."""
    pages, token = [], ""
    while True:
        page = await stub.ListConnectorProfiles(
            pb.ListConnectorProfilesRequest(page_token=token, **request), metadata=bearer()
        )
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages


async def test_every_profile_is_listed_page_after_page(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator: httpx.AsyncClient
) -> None:
    """Pages of 3 hold every profile StackOne lists, once, with StackOne's total; an
    owner-scoped client sees them all (profiles are the project's, not a customer's)."""
    pages = await every_page(stub, page_size=3)
    listed = [profile for page in pages for profile in page.connector_profiles]
    assert [len(page.connector_profiles) for page in pages] == [3, 3, 1]
    assert {page.total for page in pages} == {len(PROFILES)}
    assert [profile.id for profile in listed] == [profile.id for profile in PROFILES]
    raw = (await emulator.get("/connector_profiles", params={"page_size": 100})).json()["data"]
    bamboohr = next(profile for profile in listed if profile.connector_key == "bamboohr")
    answered = next(profile for profile in raw if profile["connector_key"] == "bamboohr")
    assert (bamboohr.name, bamboohr.connector_label) == (answered["name"], "BambooHR")
    assert (list(bamboohr.categories), bamboohr.default, bamboohr.active) == (["hris"], True, True)
    assert bamboohr.connector_version == answered["connector_version"]
    assert bamboohr.authentication_config_key == "api_key"
    assert bamboohr.HasField("created_at")


async def test_the_filters_reach_stackone(stub: pb_grpc.ConnectServiceAsyncStub) -> None:
    """`connector_key` and `enabled` select at StackOne: HiBob has a default profile and a
    disabled beta one."""
    [hibob] = await every_page(stub, connector_key="hibob")
    assert sorted(p.name for p in hibob.connector_profiles) == [
        "HiBob (default)",
        "HiBob v2 (beta)",
    ]
    [disabled] = await every_page(stub, enabled=False)
    assert [(p.name, p.active, p.default) for p in disabled.connector_profiles] == [
        ("HiBob v2 (beta)", False, False)
    ]
    [enabled] = await every_page(stub, enabled=True, page_size=100)
    assert len(enabled.connector_profiles) == enabled.total == len(PROFILES) - 1


async def test_the_scope_and_the_page_token_are_checked(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator: httpx.AsyncClient
) -> None:
    """Without `connector_profiles:read` the call is PERMISSION_DENIED naming it; a page
    token of another listing (the caller's own ListAccounts') is INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.ListConnectorProfiles(
            pb.ListConnectorProfilesRequest(), metadata=bearer(ACCOUNTS)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "connector_profiles:read" in (denied.value.details() or "")
    for provider in ("hibob", "bamboohr"):
        spec = {"provider": provider, "origin_owner_id": "acme-1", "origin_owner_name": "A"}
        assert (await emulator.post("/emulator/accounts", json=spec)).status_code == 201
    accounts = await stub.ListAccounts(
        pb.ListAccountsRequest(origin_owner_ids=["acme-1"], page_size=1), metadata=bearer()
    )
    assert accounts.next_page_token
    for token in (accounts.next_page_token, "not-a-token"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListConnectorProfiles(
                pb.ListConnectorProfilesRequest(page_token=token), metadata=bearer()
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (refused.value.details() or "")


async def test_the_emulators_profile_answers_are_the_2026_06_models(
    stub: pb_grpc.ConnectServiceAsyncStub, emulator: httpx.AsyncClient
) -> None:
    """The listing, a profile's versions and its pinned version (put, get, delete) take the
    2026-06 shapes at their paths; a pin shows in both listings and is gone once deleted."""
    listing = (await emulator.get("/connector_profiles", params={"page_size": 2})).json()
    assert facts.problems(facts.CONNECTOR_PROFILES_PAGINATED, listing) == []
    assert [facts.problems(facts.CONNECTOR_PROFILE, p) for p in listing["data"]] == [[]] * 2
    profile_id = listing["data"][0]["id"]
    paths = {
        name: path.replace("{connectorProfileId}", profile_id)
        for name, (_, path) in facts.PATHS.items()
    }
    pin = {"pinned_version": "1.0.0", "owner": "stackone"}
    assert facts.problems(facts.UPSERT_CONNECTOR_PROFILE_PINNED_VERSION, pin) == []
    put = await emulator.put(paths["upsert_pinned_version"], json=pin)
    got = await emulator.get(paths["get_pinned_version"])
    versions = (await emulator.get(paths["list_connector_profile_versions"])).json()
    [listed] = await every_page(stub, connector_key=listing["data"][0]["connector_key"])
    deleted = await emulator.delete(paths["delete_pinned_version"])
    gone = await emulator.get(paths["get_pinned_version"])
    for answer in (put, got):
        assert answer.status_code == 200, answer.text
        assert facts.problems(facts.CONNECTOR_PROFILE_PINNED_VERSION, answer.json()) == []
    assert [facts.problems(facts.CONNECTOR_PROFILE_VERSION, v) for v in versions] == [[]] * 2
    assert [v["version"] for v in versions if v["pinned"]] == ["1.0.0"]
    assert listed.connector_profiles[0].connector_pinned_version == "1.0.0"
    assert (deleted.status_code, gone.status_code) == (204, 404)
    recorded = (await emulator.get("/emulator/requests")).json()
    ours = [
        request
        for request in recorded
        if request["path"] == "/connector_profiles"
        and request["headers"].get("user-agent", "").startswith("stackone-connect/")
    ]
    sent = {key for request in ours for key, _ in request["query"]}
    assert sent == {"page_size", "connector_key"}
    assert sent <= facts.LIST_CONNECTOR_PROFILES_QUERY
