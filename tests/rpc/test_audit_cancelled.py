"""Mutating calls whose caller gives up keep their audit record: cancelled by the client or
past their deadline, a `CreateSession` or `DeleteAccount` leaves its `ended` record (after
its `started` one, fail-closed) with the code the caller saw and what StackOne was asked
and answered, StackOne answering after 1 s (an emulator fault)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest

from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.support import eventually, make_settings

pytestmark = pytest.mark.asyncio
SLOW = 1.0  # seconds StackOne takes to answer a request with a fault
FAIL_CLOSED = [pytest.param(False, id="fail-open"), pytest.param(True, id="fail-closed")]
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-billing-token-0123456789"
SCOPES = ["sessions:create", "accounts:read", "accounts:write", "events:read"]
SESSION = pb.CreateSessionRequest(origin_owner_id="acme-1", origin_owner_name="Acme")


@dataclass
class Audited:
    """A running service with an audit file, its stub and the emulator's control room."""

    stub: pb_grpc.ConnectServiceAsyncStub
    emulator: httpx.AsyncClient
    audit: Path

    def records(self) -> list[dict[str, Any]]:
        """The audit file's records so far."""
        if not self.audit.exists():
            return []
        return [orjson.loads(line) for line in self.audit.read_bytes().splitlines()]

    async def ended(self) -> list[dict[str, Any]]:
        """The records, once one of them is an `ended` record (waiting on the file)."""
        await eventually(lambda: any(r["stage"] == "ended" for r in self.records()), 5)
        return self.records()

    async def account(self, owner: str = "acme-1") -> str:
        """The id of a new account of `owner` at StackOne."""
        spec = {"provider": "hibob", "origin_owner_id": owner, "origin_owner_name": "Acme"}
        created = await self.emulator.post("/emulator/accounts", json=spec)
        assert created.status_code == 201, created.text
        account_id: str = created.json()["id"]
        return account_id

    async def slow(self, method: str, path_prefix: str) -> None:
        """Makes StackOne answer `method` requests under `path_prefix` after `SLOW` s."""
        fault = {"method": method, "path_prefix": path_prefix, "delay": SLOW}
        assert (await self.emulator.post("/emulator/faults", json=fault)).status_code == 201

    async def requests_to(self, method: str, path: str) -> int:
        """How many `method path` requests reached StackOne."""
        sent = (await self.emulator.get("/emulator/requests")).json()
        return sum(1 for r in sent if (r["method"], r["path"]) == (method, path))

    def arrived(self, method: str, path: str) -> Callable[[], Awaitable[bool]]:
        """Whether a `method path` request has reached StackOne, as a condition."""

        async def condition() -> bool:
            return await self.requests_to(method, path) > 0

        return condition

    async def exists(self, account_id: str) -> bool:
        """Whether StackOne still has the account (asked directly, past the service)."""
        found = await self.emulator.get(f"/accounts/{account_id}")
        return found.status_code == 200


@asynccontextmanager
async def audited_service(
    tmp_path: Path, *, fail_closed: bool, clients: Path | None = None
) -> AsyncIterator[Audited]:
    """The service with an audit file (fail-closed or not) and the emulator it calls."""
    audit = tmp_path / "audit.jsonl"
    settings = make_settings(
        tmp_path, audit_sink=str(audit), audit_fail_closed=fail_closed, clients_file=clients
    )
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
    ):
        assert service.emulator is not None
        auth = (settings.emulator_api_key, "")
        async with httpx.AsyncClient(base_url=service.emulator.base_url, auth=auth) as emulator:
            yield Audited(pb_grpc.ConnectServiceStub(channel), emulator, audit)


async def cancelled_once(call: Any, arrived: Callable[[], Awaitable[bool]]) -> grpc.StatusCode:
    """Cancels `call` once `arrived()` holds (its request reached StackOne); the code the
    caller then sees."""
    await eventually(arrived, 5)
    call.cancel()
    code: grpc.StatusCode = await call.code()
    return code


def stages(records: list[dict[str, Any]], fail_closed: bool) -> dict[str, Any]:
    """The `ended` record, after checking the records are the call's pair (fail-closed)
    or its `ended` record alone."""
    assert [r["stage"] for r in records] == (["started", "ended"] if fail_closed else ["ended"])
    if fail_closed:
        assert records[0]["upstream"] is None
    return records[-1]


@pytest.mark.parametrize("fail_closed", FAIL_CLOSED)
async def test_a_deletion_the_client_cancels_is_recorded_with_stackones_answer(
    tmp_path: Path, fail_closed: bool
) -> None:
    """DeleteAccount cancelled once StackOne has the request: the deletion goes on, and its
    record says CANCELLED, StackOne asked and its 200, and names the account's owner."""
    async with audited_service(tmp_path, fail_closed=fail_closed) as service:
        account_id = await service.account()
        await service.slow("DELETE", "/accounts")
        path = f"/accounts/{account_id}"
        call = service.stub.DeleteAccount(pb.DeleteAccountRequest(account_id=account_id))
        code = await cancelled_once(call, service.arrived("DELETE", path))
        ended = stages(await service.ended(), fail_closed)
        gone = not await service.exists(account_id)
    assert code == grpc.StatusCode.CANCELLED
    assert (ended["method"], ended["code"]) == ("DeleteAccount", "CANCELLED")
    assert ended["upstream"] == {"asked": True, "answers": ["200"]}
    assert ended["account_ids"] == [account_id]
    assert ended["owner_ids"] == ["acme-1"]
    assert gone


@pytest.mark.parametrize("fail_closed", FAIL_CLOSED)
async def test_a_deletion_past_its_deadline_is_recorded_as_such(
    tmp_path: Path, fail_closed: bool
) -> None:
    """DeleteAccount with a 0.5 s deadline, StackOne answering after 1 s: the record says
    DEADLINE_EXCEEDED (not UNAVAILABLE) and that StackOne was asked and gave no answer in
    time; StackOne does delete the account."""
    async with audited_service(tmp_path, fail_closed=fail_closed) as service:
        account_id = await service.account()
        await service.slow("DELETE", "/accounts")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await service.stub.DeleteAccount(
                pb.DeleteAccountRequest(account_id=account_id), timeout=0.5
            )
        ended = stages(await service.ended(), fail_closed)
        await eventually(lambda: _not(service.exists(account_id)), 5)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (ended["method"], ended["code"]) == ("DeleteAccount", "DEADLINE_EXCEEDED")
    assert ended["upstream"] == {"asked": True, "answers": ["timeout"]}


@pytest.mark.parametrize("fail_closed", FAIL_CLOSED)
async def test_a_session_the_client_cancels_is_recorded_with_stackones_answer(
    tmp_path: Path, fail_closed: bool
) -> None:
    """CreateSession cancelled once StackOne has the request: its record says CANCELLED,
    StackOne asked and its 201 (the session StackOne made)."""
    async with audited_service(tmp_path, fail_closed=fail_closed) as service:
        await service.slow("POST", "/connect_sessions")
        call = service.stub.CreateSession(SESSION)
        code = await cancelled_once(call, service.arrived("POST", "/connect_sessions"))
        ended = stages(await service.ended(), fail_closed)
    assert code == grpc.StatusCode.CANCELLED
    assert (ended["method"], ended["code"]) == ("CreateSession", "CANCELLED")
    assert ended["upstream"] == {"asked": True, "answers": ["201"]}
    assert ended["owner_ids"] == ["acme-1"]


@pytest.mark.parametrize("fail_closed", FAIL_CLOSED)
async def test_a_deletion_cancelled_before_stackone_is_asked_asks_nothing(
    tmp_path: Path, fail_closed: bool
) -> None:
    """A scoped client's DeleteAccount cancelled during its owner look-up (StackOne slow to
    answer the GET): the DELETE is never sent, and the record says CANCELLED, not asked."""
    clients = tmp_path / "clients.json"
    entries = [
        {"name": "admin", "token": ADMIN, "scopes": SCOPES},
        {"name": "acme", "token": ACME, "scopes": SCOPES, "owners": ["acme-*"]},
    ]
    clients.write_bytes(orjson.dumps({"clients": entries}))
    async with audited_service(tmp_path, fail_closed=fail_closed, clients=clients) as service:
        # No webhook, so the registry does not hold the account: its owner is asked of StackOne.
        muted = await service.emulator.put("/emulator/webhooks", json={"enabled": False})
        assert muted.is_success
        account_id = await service.account()
        await service.slow("GET", f"/accounts/{account_id}")
        path = f"/accounts/{account_id}"
        call = service.stub.DeleteAccount(
            pb.DeleteAccountRequest(account_id=account_id),
            metadata=(("authorization", f"Bearer {ACME}"),),
        )
        code = await cancelled_once(call, service.arrived("GET", path))
        ended = stages(await service.ended(), fail_closed)
        deletions = await service.requests_to("DELETE", path)
        kept = await service.exists(account_id)
    assert code == grpc.StatusCode.CANCELLED
    assert (ended["client"], ended["code"]) == ("acme", "CANCELLED")
    assert ended["upstream"] == {"asked": False, "answers": []}
    assert deletions == 0
    assert kept


async def _not(condition: Any) -> bool:
    return not await condition
