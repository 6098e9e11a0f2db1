"""The example app's backend (examples/web) over HTTP, against the real service: the
customer's accounts listed from the registry, and a reconnect session for a broken one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from examples.web.app import Config, build_app
from service.runtime import Runtime, running
from tests.harness.support import eventually, make_settings

pytestmark = pytest.mark.asyncio
OWNER = Config.owner_id


@dataclass
class Example:
    """The example app's API and the emulated StackOne behind the service."""

    app: httpx.AsyncClient
    emulator: httpx.AsyncClient
    service: Runtime

    async def create(self, owner: str = OWNER) -> str:
        """A new account at StackOne (its webhook is delivered); returns its id."""
        spec = {"provider": "hibob", "origin_owner_id": owner, "origin_owner_name": owner}
        return str((await self.emulator.post("/emulator/accounts", json=spec)).json()["id"])

    async def listing(self) -> dict[str, Any]:
        """`GET /api/accounts`."""
        answer = await self.app.get("/api/accounts")
        assert answer.status_code == 200, answer.text
        listed: dict[str, Any] = answer.json()
        return listed


@asynccontextmanager
async def example(tmp_path: Path, reconcile_interval: float) -> AsyncIterator[Example]:
    """The example app on a free port, backed by the service sweeping StackOne every
    `reconcile_interval` s (0: never, so its registry is never complete)."""
    settings = make_settings(tmp_path, reconcile_interval=reconcile_interval, reconcile_grace=0)
    async with running(settings) as service:
        assert service.emulator is not None
        runner = web.AppRunner(build_app(Config(grpc_target=service.grpc_target)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as app,
                httpx.AsyncClient(base_url=service.emulator.base_url, timeout=10) as emulator,
            ):
                yield Example(app, emulator, service)
        finally:
            await runner.cleanup()


async def test_the_customers_accounts_come_from_the_registry_and_a_broken_one_offers_a_reconnect(
    tmp_path: Path,
) -> None:
    """Only the signed-in customer's accounts, from the registry with its cursor; the one in
    error says so and offers a reconnect, whose session is bound to it; another customer's
    account cannot be reconnected."""
    async with example(tmp_path, reconcile_interval=0.2) as app:
        working, broken = sorted([await app.create(), await app.create()])
        other = await app.create(owner="globex")
        changed = await app.emulator.patch(f"/emulator/accounts/{broken}", json={"status": "error"})
        assert changed.status_code == 200, changed.text

        async def broken_in_registry() -> bool:
            listed = await app.listing()
            statuses = {
                entry["account"]["id"]: entry["account"]["raw_status"]
                for entry in listed["accounts"]
            }
            return listed["answered_from"] == "registry" and statuses.get(broken) == "error"

        await eventually(broken_in_registry, timeout=20)
        listed = await app.listing()
        reconnect = await app.app.post("/api/connect-session", json={"account_id": broken})
        refused = await app.app.post("/api/connect-session", json={"account_id": other})
        recorded = (await app.emulator.get("/emulator/requests")).json()
        # The last session asked for (a reconciliation sweep may have listed since).
        sent = [r for r in recorded if r["path"] == "/connect_sessions"][-1]
    assert listed["cursor"].isdigit()
    entries = {entry["account"]["id"]: entry for entry in listed["accounts"]}
    assert sorted(entries) == [working, broken]
    assert (entries[working]["reconnect"], entries[broken]["reconnect"]) == (False, True)
    assert "link again" in entries[broken]["meaning"]
    assert int(entries[broken]["account"]["registry_cursor"]) <= int(listed["cursor"])
    assert reconnect.status_code == 200, reconnect.text
    assert sent["body"]["account_id"] == broken
    assert refused.status_code == 404
    assert refused.json() == {"error": "not one of your accounts"}


async def test_before_the_registry_is_complete_the_listing_says_it_came_from_stackone(
    tmp_path: Path,
) -> None:
    """With no reconciliation sweep yet the listing still holds the accounts, from
    StackOne, and says so, with no cursor."""
    async with example(tmp_path, reconcile_interval=0) as app:
        account_id = await app.create()
        listed = await app.listing()
    assert (listed["answered_from"], listed["cursor"]) == ("stackone", "")
    assert [entry["account"]["id"] for entry in listed["accounts"]] == [account_id]


async def test_an_expired_account_offers_a_reconnect_and_a_suspended_one_does_not(
    tmp_path: Path,
) -> None:
    """Expired credentials are the customer's to renew (Reconnect); a suspension is
    StackOne's to lift, which reconnecting would not do. Each says what it means."""
    async with example(tmp_path, reconcile_interval=0.2) as app:
        expired, suspended = await app.create(), await app.create()
        for account_id, status in ((expired, "expired"), (suspended, "suspended")):
            broken = await app.emulator.post(
                f"/emulator/accounts/{account_id}/break", json={"status": status}
            )
            assert broken.status_code == 200, broken.text

        async def both_in_registry() -> bool:
            listed = await app.listing()
            statuses = {entry["account"]["raw_status"] for entry in listed["accounts"]}
            return listed["answered_from"] == "registry" and statuses == {"expired", "suspended"}

        await eventually(both_in_registry, timeout=20)
        entries = {entry["account"]["id"]: entry for entry in (await app.listing())["accounts"]}
    assert (entries[expired]["reconnect"], entries[suspended]["reconnect"]) == (True, False)
    assert entries[expired]["account"]["status"] == "ACCOUNT_STATUS_EXPIRED"
    assert "reconnect to enter new ones" in entries[expired]["meaning"]
    assert "until it is re-enabled" in entries[suspended]["meaning"]
