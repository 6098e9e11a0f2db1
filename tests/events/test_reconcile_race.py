"""Reconciliation does not undo a change recorded while its listing of StackOne ran."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest

from service.emulator.accounts import new_account
from service.emulator.bodies import AccountSpec
from service.events.reconcile import PAGE_SIZE
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.registries import Registry, registry_service
from tests.harness.streams import replay_all
from tests.harness.support import LogBackend, eventually, metric

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]
SWEEPS = 'stackone_connect_reconcile_sweeps_total{outcome="ok"}'
LISTING_DELAY = 2.0  # seconds each page of StackOne's listing takes: the race's window


@pytest.mark.timeout(90)
async def test_a_deletion_recorded_while_a_listing_runs_is_not_undone(
    tmp_path: Path, backend: LogBackend
) -> None:
    """An account deleted at StackOne, its webhook recorded, after a sweep's listing showed
    it and before that listing ended: the sweep brings no created or updated event for it
    and the registry keeps it deleted."""
    async with _racing(tmp_path, backend) as (stackone, admin, target):
        await eventually(lambda: _page_asked(stackone.emulator, 1), timeout=20)
        sweeps = await _delete_while_listing(stackone, admin, target)
        await _assert_stays_deleted(stackone, admin, target, sweeps)


@pytest.mark.timeout(90)
async def test_a_change_then_a_deletion_while_a_listing_runs_stay(
    tmp_path: Path, backend: LogBackend
) -> None:
    """An account changed (webhook recorded) before a sweep's listing read it, then deleted
    (webhook recorded) before the listing ended: the sweep does not record, after the
    deletion, the change its listing read before it, which would bring the account back."""
    async with _racing(tmp_path, backend) as (stackone, admin, target):
        await eventually(lambda: _page_asked(stackone.emulator, 0), timeout=20)
        mended = await stackone.emulator.post(f"/emulator/accounts/{target}/mend")
        assert mended.status_code == 200, mended.text
        await eventually(lambda: _registry_status(stackone, target, "active"), timeout=10)
        assert not await _page_asked(stackone.emulator, 1), "recorded before page 0 was read"
        await eventually(lambda: _page_asked(stackone.emulator, 1), timeout=20)
        sweeps = await _delete_while_listing(stackone, admin, target)
        await _assert_stays_deleted(stackone, admin, target, sweeps)


@asynccontextmanager
async def _racing(
    tmp_path: Path, backend: LogBackend
) -> AsyncIterator[tuple[Registry, httpx.AsyncClient, str]]:
    """A service whose registry holds an account (in error) on the first page of a listing
    that takes LISTING_DELAY per page, from a point where no page has been asked for yet."""
    async with (
        registry_service(tmp_path, backend, reconcile_interval=0.05) as stackone,
        httpx.AsyncClient(base_url=stackone.service.admin.base_url) as admin,
    ):
        target = await stackone.account()  # listed first: on the listing's first page
        await _fill_first_page(stackone)
        await stackone.holds([target])
        # A state no sweep has recorded yet (an event id of its own for a sweep to bring).
        await stackone.set_status(target, "error")
        await eventually(lambda: _registry_status(stackone, target, "error"), timeout=10)
        fault = {"path": "/accounts", "method": "GET", "delay": LISTING_DELAY}
        assert (await stackone.emulator.post("/emulator/faults", json=fault)).is_success
        # Every page asked for from here on waits LISTING_DELAY before it is read.
        assert (await stackone.emulator.delete("/emulator/requests")).is_success
        yield stackone, admin, target


async def _delete_while_listing(
    stackone: Registry, admin: httpx.AsyncClient, account_id: str
) -> float:
    """Deletes the account at StackOne while a sweep's listing runs (its second page asked
    for: the first, with the account on it, came back), and returns once the deletion is
    recorded, with the sweeps completed before that sweep ends."""
    sweeps = await metric(admin, SWEEPS)
    await stackone.delete(account_id)
    await eventually(lambda: _gone_from_registry(stackone, account_id), timeout=10)
    assert await metric(admin, SWEEPS) == sweeps, "recorded while the listing still ran"
    return sweeps


async def _assert_stays_deleted(
    stackone: Registry, admin: httpx.AsyncClient, account_id: str, sweeps: float
) -> None:
    await eventually(lambda: _swept(admin, sweeps + 1), timeout=20)
    assert await _gone_from_registry(stackone, account_id), "the sweep brought it back"
    async with grpc.aio.insecure_channel(stackone.service.grpc_target) as channel:
        events = await replay_all(pb_grpc.ConnectServiceStub(channel))
    of_account = [(e.type, e.source) for e in events if e.account.id == account_id]
    deleted = of_account.index(("account.deleted", pb.EVENT_SOURCE_WEBHOOK))
    assert of_account[deleted:] == [("account.deleted", pb.EVENT_SOURCE_WEBHOOK)]


async def _fill_first_page(stackone: Registry) -> None:
    """PAGE_SIZE more accounts, without webhooks (the sweeps record them), so the listing
    goes on past its first page."""
    state = stackone.state
    state.config.deliver_webhooks = False
    for _ in range(PAGE_SIZE):
        new_account(state, AccountSpec(origin_owner_id="filler", origin_owner_name="Filler"))
    state.config.deliver_webhooks = True


async def _page_asked(emulator: httpx.AsyncClient, page: int) -> bool:
    asked = (await emulator.get("/emulator/requests")).json()
    return any(
        r["method"] == "GET" and r["path"] == "/accounts" and ["page", str(page)] in r["query"]
        for r in asked
    )


async def _registry_status(stackone: Registry, account_id: str, status: str) -> bool:
    page = await stackone.stub.ListAccounts(
        pb.ListAccountsRequest(read_from=pb.READ_FROM_REGISTRY, account_ids=[account_id])
    )
    return [account.raw_status for account in page.accounts] == [status]


async def _gone_from_registry(stackone: Registry, account_id: str) -> bool:
    page = await stackone.stub.ListAccounts(
        pb.ListAccountsRequest(read_from=pb.READ_FROM_REGISTRY, account_ids=[account_id])
    )
    assert page.answered_from == pb.READ_FROM_REGISTRY
    return not page.accounts


async def _swept(admin: httpx.AsyncClient, sweeps: float) -> bool:
    return await metric(admin, SWEEPS) >= sweeps
