"""Reconciliation trusts a listing only for what it shows, and ends whatever StackOne sends."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import orjson
import pytest

from service.emulator import EMULATOR_STATE
from service.emulator.accounts import new_account
from service.emulator.bodies import AccountSpec
from service.events.reconcile import PAGE_SIZE, PAGES_IN_FLIGHT
from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.streams import replay_all
from tests.harness.support import LogBackend, eventually, make_settings, metric, more_sweeps

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]
SWEEPS = 'stackone_connect_reconcile_sweeps_total{outcome="ok"}'
OWNER = {"provider": "hibob", "origin_owner_id": "t-1", "origin_owner_name": "Acme"}


async def recorded(service: Runtime) -> list[pb.AccountEvent]:
    """Every event of the service's log, read from the start."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        return await replay_all(pb_grpc.ConnectServiceStub(channel))


async def test_an_account_missing_from_a_listing_is_deleted_only_after_a_404(
    tmp_path: Path, backend: LogBackend
) -> None:
    """A listing that leaves out a live account records nothing; the 404 of its look-up does."""
    settings = make_settings(
        tmp_path, reconcile_interval=0.05, reconcile_grace=0, **backend.settings()
    )
    async with running(settings) as service:
        assert service.emulator is not None
        async with (
            httpx.AsyncClient(base_url=service.emulator.base_url) as emulator,
            httpx.AsyncClient(base_url=service.admin.base_url) as http,
        ):
            account_id = (await emulator.post("/emulator/accounts", json=OWNER)).json()["id"]
            await eventually(lambda: _has(service, "account.created", account_id), timeout=10)
            await emulator.put("/emulator/webhooks", json={"enabled": False})
            fault = {"path": "/accounts", "method": "GET", "body": "[]"}
            assert (await emulator.post("/emulator/faults", json=fault)).status_code == 201
            await more_sweeps([http], 3)
            assert not await _has(service, "account.deleted", account_id)
            calls = (await emulator.get("/emulator/stats")).json()["calls"]
            assert calls["GET /accounts/{account_id}"] >= 3, "each sweep looked it up"
            async with grpc.aio.insecure_channel(service.grpc_target) as channel:
                stub: pb_grpc.ConnectServiceAsyncStub = pb_grpc.ConnectServiceStub(channel)
                await stub.DeleteAccount(pb.DeleteAccountRequest(account_id=account_id))
            await eventually(lambda: _has(service, "account.deleted", account_id), timeout=10)


async def test_a_listing_that_ignores_its_page_still_ends(
    tmp_path: Path, backend: LogBackend
) -> None:
    """StackOne answering every page with the same full page: each sweep ends at its
    second page (the pages asked for with it aside)."""
    settings = make_settings(
        tmp_path, reconcile_interval=0.05, reconcile_grace=0, **backend.settings()
    )
    page = [{**OWNER, "id": f"acc-{n}", "status": "active"} for n in range(PAGE_SIZE)]
    async with running(settings) as service:
        assert service.emulator is not None
        async with (
            httpx.AsyncClient(base_url=service.emulator.base_url) as emulator,
            httpx.AsyncClient(base_url=service.admin.base_url) as http,
        ):
            fault = {"path": "/accounts", "method": "GET", "body": orjson.dumps(page).decode()}
            assert (await emulator.post("/emulator/faults", json=fault)).status_code == 201
            await more_sweeps([http], 3)
            calls = (await emulator.get("/emulator/stats")).json()["calls"]
            sweeps = await metric(http, SWEEPS)
        events = await recorded(service)
    assert calls["GET /accounts"] <= (1 + PAGES_IN_FLIGHT) * (sweeps + 1)
    created = {e.account.id for e in events if e.type == "account.created"}
    assert created == {account["id"] for account in page}


async def _has(service: Runtime, event_type: str, account_id: str) -> bool:
    return any(e.type == event_type and e.account.id == account_id for e in await recorded(service))


@pytest.mark.timeout(120)
async def test_a_long_listing_asks_for_several_pages_at_a_time(
    tmp_path: Path, backend: LogBackend
) -> None:
    """A first sweep of 1,500 accounts (15 pages) from a StackOne answering in 0.3 s asks
    for pages PAGES_IN_FLIGHT at a time, paced by the budget rather than by StackOne's
    latency, and the registry it completes holds every account."""
    settings = make_settings(
        tmp_path, reconcile_interval=0.05, reconcile_grace=0, **backend.settings()
    )
    async with running(settings) as service:
        assert service.emulator is not None
        state = service.emulator.runner.app[EMULATOR_STATE]
        state.config.deliver_webhooks = False
        for _ in range(15 * PAGE_SIZE):
            new_account(state, AccountSpec.model_validate(OWNER))
        async with (
            httpx.AsyncClient(base_url=service.emulator.base_url) as emulator,
            httpx.AsyncClient(base_url=service.admin.base_url) as http,
        ):
            assert (await emulator.put("/emulator/behaviour", json={"latency": 0.3})).is_success
            # Recording 1,500 events takes seconds on JetStream when the machine is busy.
            await more_sweeps([http], 1, timeout=60)
            stats = (await emulator.get("/emulator/stats")).json()
        events = await recorded(service)
    assert 1 < stats["most_in_flight"]["GET /accounts"] <= PAGES_IN_FLIGHT
    assert len({e.account.id for e in events if e.type == "account.created"}) == 15 * PAGE_SIZE
