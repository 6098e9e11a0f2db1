"""The accounts read model on its own, without a server: a real event log (SQLite and
JetStream) holding the registry, and a StackOne client calling the emulator over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from service.emulator import EmulatorConfig, build_emulator_app
from service.events.log import EventLog
from service.events.model import NotInRegistry
from service.events.records import event_record
from service.owners import OwnerNotAllowed, OwnerScope
from service.rpc.accounts import AccountsReadModel
from service.stackone.client import StackOneClient
from service.stackone.errors import StackOneNotFound
from service.web import listening
from stackone_connect.v1 import stackone_connect_pb2 as pb

pytestmark = pytest.mark.asyncio
BACKENDS = ["sqlite", "jetstream"]

DEADLINE = 5.0
ACME = OwnerScope.parse(["acme"])
FROM_REGISTRY = pb.READ_FROM_REGISTRY
FROM_STACKONE = pb.READ_FROM_STACKONE


@dataclass(slots=True)
class World:
    """The read model, the log its registry lives in, and the emulator's control API."""

    accounts: AccountsReadModel
    log: EventLog
    emulator: httpx.AsyncClient

    async def linked(self, owner: str) -> str:
        """An account of `owner` in StackOne, active there and recorded in the registry as
        `error`, so that an answer says by its status which of the two it came from."""
        spec = {"provider": "hibob", "origin_owner_id": owner, "origin_owner_name": owner}
        account_id: str = (await self.emulator.post("/emulator/accounts", json=spec)).json()["id"]
        account = pb.Account(
            id=account_id, provider="hibob", origin_owner_id=owner, raw_status="error",
            status=pb.ACCOUNT_STATUS_ERROR,
        )  # fmt: skip
        event = pb.AccountEvent(
            event_id=f"evt-{account_id}", type="account.created", account=account
        )
        await self.log.append([event_record(event)])
        return account_id


@pytest_asyncio.fixture
async def world(event_log: EventLog) -> AsyncIterator[World]:
    """A read model over the test's log and a StackOne emulator that sends no webhooks."""
    config = EmulatorConfig(api_key="read-model-key", deliver_webhooks=False)
    async with (
        listening(build_emulator_app(config), "127.0.0.1", 0) as stackone,
        httpx.AsyncClient(base_url=stackone.base_url) as emulator,
        StackOneClient(stackone.base_url, config.api_key) as client,
    ):
        yield World(AccountsReadModel(event_log, client), event_log, emulator)


def listing(*owners: str, read_from: pb.ReadFrom.ValueType) -> pb.ListAccountsRequest:
    """A first-page listing request of `owners`' accounts."""
    return pb.ListAccountsRequest(origin_owner_ids=owners, read_from=read_from, page_size=50)


async def test_the_registry_answers_only_once_complete(world: World) -> None:
    """Asked for the registry, an incomplete one leaves the answer to StackOne; once
    complete, the registry answers, with the cursor it reflects."""
    account_id = await world.linked("acme")
    before = await world.accounts.account(None, account_id, FROM_REGISTRY, DEADLINE)
    listed_before = await world.accounts.listing(
        None, listing(read_from=FROM_REGISTRY), None, DEADLINE
    )
    await world.log.mark_registry_complete()
    after = await world.accounts.account(None, account_id, FROM_REGISTRY, DEADLINE)
    listed_after = await world.accounts.listing(
        None, listing(read_from=FROM_REGISTRY), None, DEADLINE
    )
    from_stackone = await world.accounts.account(None, account_id, FROM_STACKONE, DEADLINE)

    assert (before.answered_from, before.accounts[0].raw_status) == (FROM_STACKONE, "active")
    assert [a.raw_status for a in listed_before.accounts] == ["active"]
    assert (listed_before.answered_from, listed_before.cursor) == (FROM_STACKONE, "")
    assert (after.answered_from, after.accounts[0].raw_status) == (FROM_REGISTRY, "error")
    assert after.accounts[0].registry_cursor
    assert [a.id for a in listed_after.accounts] == [account_id]
    assert listed_after.answered_from == FROM_REGISTRY
    assert listed_after.cursor == after.accounts[0].registry_cursor
    assert from_stackone.answered_from == FROM_STACKONE  # asked for StackOne, StackOne answers


@pytest.mark.parametrize("complete", [False, True], ids=["from-stackone", "from-registry"])
async def test_a_scoped_caller_sees_its_customers_accounts_only(
    world: World, complete: bool
) -> None:
    """From either source, another customer's account is answered as a missing one, a
    listing names the caller's owners when it names none and keeps only their accounts,
    and naming another owner is refused."""
    ours = await world.linked("acme")
    theirs = await world.linked("globex")
    if complete:
        await world.log.mark_registry_complete()
    source = FROM_REGISTRY if complete else FROM_STACKONE
    missing = NotInRegistry if complete else StackOneNotFound

    found = await world.accounts.account(ACME, ours, FROM_REGISTRY, DEADLINE)
    with pytest.raises(missing, match=theirs):
        await world.accounts.account(ACME, theirs, FROM_REGISTRY, DEADLINE)
    request = listing(read_from=FROM_REGISTRY)
    scanned = world.accounts.narrow(ACME, request)
    listed = await world.accounts.listing(ACME, request, None, DEADLINE)
    with pytest.raises(OwnerNotAllowed, match="globex"):
        world.accounts.narrow(ACME, listing("globex", read_from=FROM_REGISTRY))
    unscoped = await world.accounts.listing(None, listing(read_from=FROM_REGISTRY), None, DEADLINE)

    assert (found.answered_from, [a.id for a in found.accounts]) == (source, [ours])
    assert (scanned, list(request.origin_owner_ids)) == (False, ["acme"])
    assert (listed.answered_from, [a.id for a in listed.accounts]) == (source, [ours])
    assert {a.id for a in unscoped.accounts} == {ours, theirs}
