"""StackOne as its SDK 4.34 shaped it end to end, in the emulator's 4.34 and 4.28 shapes:
gRPC → client → emulator → back, and on events and registry reads (the 2026-06 models are
tests/stackone/test_contract_2026_06_sessions.py's and
tests/stackone/test_contract_2026_06_connector_profiles.py's).

Each row of the README's "StackOne's SDK since 4.28" table: the `scheduling` category,
`integration_id` sent and echoed, `organization_id` a string (a number in the 4.28
shapes), the statuses `suspended`, `archived` and `expired`, and `shared` on accounts.
The emulator's raw answers and our client's requests are also checked against the SDK
4.34 facts in tests/harness/stackone_434.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from service.emulator.state import SDK_428_SHAPES, SDK_434_SHAPES
from service.stackone.client import StackOneClient
from stackone_connect.v1 import stackone_connect_pb2 as pb
from tests.harness import stackone_434, stackone_2026_06
from tests.harness.registries import Registry, registry_service
from tests.harness.streams import attached, next_event
from tests.harness.support import LogBackend

pytestmark = pytest.mark.asyncio
SHAPES = [SDK_434_SHAPES, SDK_428_SHAPES]
INTEGRATION_ID = str(uuid.UUID(int=0x4A31))
NEW_STATUSES = {
    "suspended": pb.ACCOUNT_STATUS_SUSPENDED,
    "archived": pb.ACCOUNT_STATUS_ARCHIVED,
    "expired": pb.ACCOUNT_STATUS_EXPIRED,
}


@pytest_asyncio.fixture(params=SHAPES)
async def stackone(
    request: pytest.FixtureRequest, tmp_path: Path, backend: LogBackend
) -> AsyncIterator[Registry]:
    """The service, its registry swept often, and its emulator in one SDK's shapes."""
    async with registry_service(tmp_path, backend, emulator_sdk_shapes=request.param) as found:
        yield found


def shapes_of(stackone: Registry) -> str:
    """The SDK version whose shapes the emulator answers in."""
    return stackone.service.settings.emulator_sdk_shapes


async def last_request(stackone: Registry, path: str) -> dict[str, Any]:
    """The last request to a StackOne endpoint `path`, as the emulator received it."""
    recorded = (await stackone.emulator.get("/emulator/requests")).json()
    found: dict[str, Any] = [r for r in recorded if r["path"] == path][-1]
    return found


async def raw(stackone: Registry, method: str, path: str, **body: Any) -> Any:
    """The emulator's raw JSON answer to a StackOne call, as StackOne's SDK would read it."""
    key = stackone.service.settings.emulator_api_key
    answer = await stackone.emulator.request(method, path, json=body or None, auth=(key, ""))
    assert answer.is_success, answer.text
    return answer.json()


async def test_a_scheduling_session_reaches_stackone_and_comes_back(stackone: Registry) -> None:
    """`scheduling` (StackOne's again since SDK 4.32.2) is accepted, sent and echoed."""
    session = await stackone.stub.CreateSession(
        pb.CreateSessionRequest(
            origin_owner_id="t-1", origin_owner_name="T", categories=["scheduling", "hris"]
        )
    )
    sent = await last_request(stackone, "/connect_sessions")
    assert sent["body"]["categories"] == ["scheduling", "hris"]
    assert list(session.categories) == ["scheduling", "hris"]


async def test_integration_id_is_sent_and_echoed_where_stackone_answers_it(
    stackone: Registry,
) -> None:
    """`integration_id` goes to StackOne as `connector_profile_id`, its name since the
    2026-06 models; both session answers carry it back as `integration_id` in 4.34's
    shapes, none in 4.28's, and the Session says so."""
    session = await stackone.stub.CreateSession(
        pb.CreateSessionRequest(
            origin_owner_id="t-1", origin_owner_name="T", integration_id=INTEGRATION_ID
        )
    )
    sent = await last_request(stackone, "/connect_sessions")
    assert sent["body"]["connector_profile_id"] == INTEGRATION_ID
    assert "integration_id" not in sent["body"]
    echoed = INTEGRATION_ID if shapes_of(stackone) == SDK_434_SHAPES else ""
    assert session.integration_id == echoed
    settings = stackone.service.settings
    assert stackone.service.emulator is not None
    async with StackOneClient(stackone.service.emulator.base_url, settings.emulator_api_key) as c:
        authenticated = await c.authenticate_connect_session(session.token)
    assert (authenticated.integration_id or "") == echoed


async def test_organization_id_is_text_whichever_type_stackone_sends(stackone: Registry) -> None:
    """A string in 4.34's answers, a number in 4.28's: the Session holds the same text."""
    session = await stackone.stub.CreateSession(
        pb.CreateSessionRequest(origin_owner_id="t-1", origin_owner_name="T")
    )
    answered = await raw(
        stackone, "POST", "/connect_sessions", origin_owner_id="t-2", origin_owner_name="U"
    )
    expected_type = str if shapes_of(stackone) == SDK_434_SHAPES else int
    assert type(answered["organization_id"]) is expected_type
    assert session.organization_id == "41"


async def test_suspended_archived_and_expired_have_their_own_status_everywhere(
    stackone: Registry,
) -> None:
    """Each new status is its own AccountStatus (not OTHER), raw_status kept, on the
    event (with the status before it), on Get and List from StackOne and the registry."""
    account_id = await stackone.account(owner="t-new")
    await stackone.holds([account_id])
    stream = stackone.stub.StreamAccountEvents(
        pb.StreamAccountEventsRequest(account_ids=[account_id])
    )
    await attached(stream)
    previous = pb.ACCOUNT_STATUS_ACTIVE
    for raw_status, status in NEW_STATUSES.items():
        await stackone.set_status(account_id, raw_status)
        event = await next_event(stream, timeout=10)
        assert (event.account.status, event.account.raw_status) == (status, raw_status)
        assert event.previous_status == previous
        previous = status
        fetched = await stackone.stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
        listed = await stackone.stub.ListAccounts(pb.ListAccountsRequest(statuses=[raw_status]))
        registered = await stackone.stub.GetAccount(
            pb.GetAccountRequest(account_id=account_id, read_from=pb.READ_FROM_REGISTRY)
        )
        assert fetched.status == listed.accounts[0].status == registered.status == status
        assert registered.raw_status == raw_status
    stream.cancel()


async def test_shared_is_carried_on_rpcs_events_and_the_registry(stackone: Registry) -> None:
    """`shared` (SDK 4.34.1) reaches Get, List, events and registry reads, and a deletion,
    which carries no account, keeps it from the registry; in the 4.28 shapes it is unset."""
    current = shapes_of(stackone) == SDK_434_SHAPES
    stream = stackone.stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    await attached(stream)
    spec = {"provider": "hibob", "origin_owner_id": "t-s", "origin_owner_name": "S"}
    created = await stackone.emulator.post("/emulator/accounts", json={**spec, "shared": True})
    assert created.status_code == 201, created.text
    account_id = created.json()["id"]
    event = await next_event(stream, timeout=10)
    await stackone.holds([account_id])
    fetched = await stackone.stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
    listed = await stackone.stub.ListAccounts(pb.ListAccountsRequest(account_ids=[account_id]))
    registered = await stackone.stub.GetAccount(
        pb.GetAccountRequest(account_id=account_id, read_from=pb.READ_FROM_REGISTRY)
    )
    await stackone.delete(account_id)
    deleted = await next_event(stream, timeout=10)
    stream.cancel()
    carried = [event.account, fetched, listed.accounts[0], registered, deleted.account]
    assert deleted.type == "account.deleted"
    if current:
        assert [account.shared for account in carried] == [True] * 5
    else:
        assert [account.HasField("shared") for account in carried] == [False] * 5


async def test_the_emulators_answers_are_the_sdk_434_models_in_its_shapes(
    stackone: Registry,
) -> None:
    """Sessions, the authenticated session and accounts parse as SDK 4.34's models (no
    unknown field, every required one, the right JSON types) in 4.34's shapes; in
    4.28's, exactly `organization_id`'s type and the two later fields differ."""
    session = await raw(
        stackone, "POST", "/connect_sessions", origin_owner_id="t-f", origin_owner_name="F",
        categories=["scheduling"], integration_id=INTEGRATION_ID,
    )  # fmt: skip
    found = await raw(stackone, "POST", "/connect_sessions/authenticate", token=session["token"])
    account_id = await stackone.account(owner="t-f")
    account = await raw(stackone, "GET", f"/accounts/{account_id}")
    listed = await raw(stackone, "GET", "/accounts")
    reports = [
        stackone_434.problems(stackone_434.CONNECT_SESSION_TOKEN_AUTH_LINK, session),
        stackone_434.problems(stackone_434.CONNECT_SESSION, found),
        stackone_434.problems(stackone_434.LINKED_ACCOUNT, account),
        *(stackone_434.problems(stackone_434.LINKED_ACCOUNT, one) for one in listed),
    ]
    if shapes_of(stackone) == SDK_434_SHAPES:
        assert reports == [[]] * len(reports)
        assert (session["integration_id"], account["shared"]) == (INTEGRATION_ID, False)
    else:
        organization = "organization_id is int, not (<class 'str'>,)"
        assert reports[:2] == [[organization]] * 2
        assert "shared" not in account
        assert "integration_id" not in session


async def test_our_client_sends_what_the_2026_06_models_take(stackone: Registry) -> None:
    """A CreateSession with every field, `integration_id` and `scheduling` included,
    reaches StackOne as a body the 2026-06 ConnectSessionCreate takes whole, the alias sent
    under its new name."""
    request = pb.CreateSessionRequest(
        origin_owner_id="t-c", origin_owner_name="C", origin_username="it@c.example",
        provider="hibob", categories=sorted(stackone_434.CATEGORIES), expires_in=600,
        account_id=await stackone.account(owner="t-c"), label="C HR", multiple=True,
        type="test", provider_version="2", integration_id=INTEGRATION_ID,
    )  # fmt: skip
    request.metadata.update({"plan": "growth"})
    await stackone.stub.CreateSession(request)
    body = (await last_request(stackone, "/connect_sessions"))["body"]
    facts = stackone_2026_06.CONNECT_SESSION_CREATE
    assert stackone_2026_06.problems(facts, body) == []
    assert set(body) == set(facts) - {"integration_id"}
