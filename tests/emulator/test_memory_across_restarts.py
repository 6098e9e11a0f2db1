"""`make run` started again agrees with its event log: the bundled emulator remembers its
accounts and sessions beside the log, so no phantom deletion is recorded and no account id
is handed out twice."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.processes import ServeProcess, serve_env, serve_process
from tests.harness.streams import replay_all
from tests.harness.support import WEBHOOK_SECRET, eventually, metric

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
SWEEPS = 'stackone_connect_reconcile_sweeps_total{outcome="ok"}'


async def events_of(serve: ServeProcess) -> list[pb.AccountEvent]:
    """Every event the service has recorded."""
    async with grpc.aio.insecure_channel(serve.grpc_target) as channel:
        return await replay_all(pb_grpc.ConnectServiceStub(channel))


async def link_one(serve: ServeProcess, provider: str) -> str:
    """A connect session for `provider`, then "the user completed the Hub": the new
    account's id, once its account.created is recorded."""
    async with grpc.aio.insecure_channel(serve.grpc_target) as channel:
        session = await pb_grpc.ConnectServiceStub(channel).CreateSession(
            pb.CreateSessionRequest(
                origin_owner_id="tenant-1", origin_owner_name="Acme", provider=provider
            )
        )
    async with httpx.AsyncClient(base_url=serve.emulator_url) as emulator:
        linked = await emulator.post("/emulator/link", json={"token": session.token})
    assert linked.is_success, linked.text
    account_id = str(linked.json()["id"])

    async def recorded() -> bool:
        return any(
            event.type == "account.created" and event.account.id == account_id
            for event in await events_of(serve)
        )

    await eventually(recorded, timeout=15)
    return account_id


async def test_a_restarted_service_keeps_its_emulators_accounts(tmp_path: Path) -> None:
    """Two runs on one directory, an account linked in each, reconciliation sweeping:
    both accounts' account.created, two different ids, and no account.deleted."""
    env = serve_env(
        tmp_path, WEBHOOK_SECRET,
        STACKONE_CONNECT_RECONCILE_INTERVAL="0.2", STACKONE_CONNECT_RECONCILE_GRACE="0",
    )  # fmt: skip
    async with serve_process(env) as first:
        linked = [await link_one(first, "hibob")]
    async with serve_process(env) as second:
        linked.append(await link_one(second, "bamboohr"))
        async with httpx.AsyncClient(base_url=second.admin_url) as admin:
            swept = await metric(admin, SWEEPS)

            async def swept_twice_more() -> bool:
                return await metric(admin, SWEEPS) >= swept + 2

            await eventually(swept_twice_more, timeout=15)
        events = await events_of(second)
    assert linked[0] != linked[1], "an id handed out twice"
    created = [event.account.id for event in events if event.type == "account.created"]
    assert created == linked
    assert [event.account.id for event in events if event.type == "account.deleted"] == []
