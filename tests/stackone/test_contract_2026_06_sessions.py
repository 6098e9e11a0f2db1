"""Connect sessions in StackOne's 2026-06 contract, on a real service and its emulator over
HTTP: `GetSession` and the latest connection attempt the emulator's Hub makes,
`connector_profile_id` (and its deprecated alias), and `categories` on accounts.

The emulator's raw answers are checked against the 2026-06 facts in
tests/harness/stackone_2026_06.py.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from service.emulator.hub import HUB_VERSION, SESSION_HEADER
from service.runtime import Runtime, running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness import stackone_2026_06 as facts
from tests.harness.processes import run_to_end
from tests.harness.registries import Registry, registry_service
from tests.harness.streams import attached, next_event
from tests.harness.support import LogBackend, details_of, make_settings

pytestmark = pytest.mark.asyncio
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-sessions-token-0123456789"
NO_READ = "creator-only-token-0123456789"
PROFILE_ID = "3f0a4e1c-2b7d-4a59-8c16-0d9e5f7a1b23"
EVERY_SCOPE = [
    *("sessions:create", "sessions:read", "accounts:read", "accounts:write"),
    *("events:read", "connector_profiles:read"),
]


@dataclass
class Sessions:
    """A service with an admin, an owner-scoped client and one that may not read sessions,
    and a client of its emulator."""

    service: Runtime
    stub: pb_grpc.ConnectServiceAsyncStub
    emulator: httpx.AsyncClient

    async def create(self, token: str = ADMIN, **fields: Any) -> pb.Session:
        """A new session for `acme-1` (unless `fields` say otherwise), asked as `token`."""
        owner = {"origin_owner_id": "acme-1", "origin_owner_name": "Acme"}
        request = pb.CreateSessionRequest(**{**owner, **fields})
        session: pb.Session = await self.stub.CreateSession(request, metadata=bearer(token))
        return session

    async def get(self, session_id: str, token: str = ADMIN) -> pb.Session:
        """`GetSession` as `token`."""
        request = pb.GetSessionRequest(session_id=session_id)
        answer = await self.stub.GetSession(request, metadata=bearer(token))
        return answer.session

    async def raw(self, method: str, path: str, **body: Any) -> Any:
        """The emulator's raw JSON answer to a StackOne call."""
        key = self.service.settings.emulator_api_key
        answer = await self.emulator.request(method, path, json=body or None, auth=(key, ""))
        assert answer.is_success, answer.text
        return answer.json()

    async def sent(self, path: str) -> list[dict[str, Any]]:
        """Every request to the StackOne endpoint `path`, as the emulator received it."""
        recorded = (await self.emulator.get("/emulator/requests")).json()
        return [request for request in recorded if request["path"] == path]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata with a bearer token."""
    return (("authorization", f"Bearer {token}"),)


@pytest_asyncio.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    """The service with its clients file, and its emulator."""
    clients = tmp_path / "clients.json"
    entries = [
        {"name": "admin", "token": ADMIN, "scopes": EVERY_SCOPE},
        {
            "name": "acme",
            "token": ACME,
            "scopes": ["sessions:create", "sessions:read"],
            "owners": ["acme-*"],
        },
        {"name": "creator", "token": NO_READ, "scopes": ["sessions:create"]},
    ]
    clients.write_bytes(orjson.dumps({"clients": entries}))
    async with running(make_settings(tmp_path, clients_file=clients)) as service:
        assert service.emulator is not None
        async with (
            grpc.aio.insecure_channel(service.grpc_target) as channel,
            httpx.AsyncClient(base_url=service.emulator.base_url, timeout=10) as emulator,
        ):
            yield Sessions(service, pb_grpc.ConnectServiceStub(channel), emulator)


class Hub:
    """StackOne's Hub as the emulator serves it, driven over HTTP for one session."""

    def __init__(self, emulator: httpx.AsyncClient, session: pb.Session) -> None:
        self._http = emulator
        self._headers = {SESSION_HEADER: session.token, "x-hub-version": HUB_VERSION}

    async def open_form(self, provider: str) -> str:
        """Lists the connectors, opens `provider`'s form; its integration id."""
        listed = await self._http.get("/hub/connectors", headers=self._headers)
        assert listed.status_code == 200, listed.text
        found = [i for i in listed.json()["integrations"] if i["provider"] == provider]
        integration_id = str(found[0]["integration_id"])
        opened = await self._http.get(f"/hub/connectors/{integration_id}", headers=self._headers)
        assert opened.status_code == 200, opened.text
        return integration_id

    async def submit(self, integration_id: str, **credentials: str) -> httpx.Response:
        """Submits the form, as the Hub's Connect button does."""
        body = {"integration_id": integration_id, "credentials": credentials}
        return await self._http.post("/hub/accounts", json=body, headers=self._headers)


async def test_get_session_follows_a_hub_attempt_that_fails_then_succeeds(
    sessions: Sessions,
) -> None:
    """No attempt before the Hub opens; pending once a form is open; `error` with the
    provider's words on a refused key; `authenticated` with the account on a good one,
    as a new attempt; the owner-scoped caller reads each."""
    session = await sessions.create(ACME, provider="bamboohr")
    assert not (await sessions.get(session.id, ACME)).HasField("latest_connection_attempt")
    hub = Hub(sessions.emulator, session)
    integration_id = await hub.open_form("bamboohr")
    pending = (await sessions.get(session.id, ACME)).latest_connection_attempt
    assert (pending.status, pending.raw_status) == (pb.CONNECTION_ATTEMPT_STATUS_PENDING, "pending")
    assert pending.id
    assert pending.HasField("created_at")
    refused = await hub.submit(integration_id, subdomain="acme", api_key="wrong-key")
    assert refused.status_code == 400, refused.text
    failed = (await sessions.get(session.id, ACME)).latest_connection_attempt
    assert failed.status == pb.CONNECTION_ATTEMPT_STATUS_ERROR
    assert failed.id == pending.id
    assert failed.error_code == "invalid_credentials"
    assert "BambooHR refused the credentials" in failed.error_description
    assert "Invalid API key" in failed.error_description
    assert not failed.account_id
    linked = await hub.submit(integration_id, subdomain="acme", api_key="good-key")
    assert linked.status_code == 201, linked.text
    done = (await sessions.get(session.id, ACME)).latest_connection_attempt
    assert done.status == pb.CONNECTION_ATTEMPT_STATUS_AUTHENTICATED
    assert done.account_id == linked.json()["id"]
    assert done.id != failed.id, "a new attempt after the failed one"
    assert not done.error_description


async def test_a_scoped_client_cannot_tell_another_owners_session_from_a_missing_one(
    sessions: Sessions,
) -> None:
    """Another customer's session is NOT_FOUND for the scoped client, in the words a
    session that does not exist gets; the admin reads it."""
    other = await sessions.create(origin_owner_id="globex", origin_owner_name="Globex")
    assert (await sessions.get(other.id)).origin_owner_id == "globex"
    messages = []
    for session_id in (other.id, "99999999"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sessions.get(session_id, ACME)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        messages.append((caught.value.details() or "").replace(session_id, "ID"))
    assert messages[0] == messages[1]


async def test_get_session_needs_its_scope_and_a_numeric_id(sessions: Sessions) -> None:
    """A client without `sessions:read` is PERMISSION_DENIED, naming the scope; an id that
    is not StackOne's number is INVALID_ARGUMENT naming `session_id`."""
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await sessions.get("70000", NO_READ)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "sessions:read" in (denied.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await sessions.get("../accounts")
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad] = details_of(invalid.value, error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["session_id"]


async def test_connector_profile_id_reaches_stackone_under_its_name(sessions: Sessions) -> None:
    """`connector_profile_id`, or `integration_id` alone (its deprecated alias), is sent as
    `connector_profile_id` (never `integration_id`) and comes back on the Session under
    both names, on CreateSession and GetSession."""
    for fields in ({"connector_profile_id": PROFILE_ID}, {"integration_id": PROFILE_ID}):
        session = await sessions.create(**fields)
        body = (await sessions.sent("/connect_sessions"))[-1]["body"]
        assert body["connector_profile_id"] == PROFILE_ID
        assert "integration_id" not in body
        fetched = await sessions.get(session.id)
        for answer in (session, fetched):
            assert (answer.connector_profile_id, answer.integration_id) == (PROFILE_ID,) * 2


async def test_two_different_profile_ids_are_refused_before_stackone(sessions: Sessions) -> None:
    """`connector_profile_id` and a different `integration_id` are INVALID_ARGUMENT naming
    `integration_id` and both values; nothing is sent to StackOne. Equal ones are fine."""
    before = len(await sessions.sent("/connect_sessions"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions.create(connector_profile_id=PROFILE_ID, integration_id="another-profile")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad] = details_of(caught.value, error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    [violation] = bad.field_violations
    assert violation.field == "integration_id"
    assert PROFILE_ID in violation.description
    assert "another-profile" in violation.description
    assert len(await sessions.sent("/connect_sessions")) == before
    same = await sessions.create(connector_profile_id=PROFILE_ID, integration_id=PROFILE_ID)
    assert same.connector_profile_id == PROFILE_ID


async def test_the_emulators_session_answers_are_the_2026_06_models(sessions: Sessions) -> None:
    """The created session, the authenticated one and `GET /connect_sessions/{id}` (with an
    attempt, and without) parse as the 2026-06 models, attempt included."""
    created = await sessions.raw(
        "POST", "/connect_sessions", origin_owner_id="t-f", origin_owner_name="F",
        categories=["hris"], connector_profile_id=PROFILE_ID, provider_version="1",
    )  # fmt: skip
    fresh = await sessions.raw("GET", f"/connect_sessions/{created['id']}")
    session = pb.Session(token=created["token"])
    await Hub(sessions.emulator, session).open_form("bamboohr")
    attempted = await sessions.raw("GET", f"/connect_sessions/{created['id']}")
    found = await sessions.raw("POST", "/connect_sessions/authenticate", token=created["token"])
    assert facts.problems(facts.CONNECT_SESSION_TOKEN_AUTH_LINK, created) == []
    assert [facts.problems(facts.CONNECT_SESSION, s) for s in (fresh, attempted, found)] == [[]] * 3
    assert fresh["latest_connection_attempt"] is None
    assert attempted["latest_connection_attempt"]["status"] == "pending"
    assert created["connector_profile_id"] == created["integration_id"] == PROFILE_ID
    assert "provider_version" not in created  # kept, not answered, as StackOne does
    method, path = facts.PATHS["get_connect_session"]
    assert (method, path.format(id=created["id"])) == ("GET", f"/connect_sessions/{created['id']}")


@pytest_asyncio.fixture
async def stackone(tmp_path: Path, backend: LogBackend) -> AsyncIterator[Registry]:
    """The service with its registry swept often, and its emulator."""
    async with registry_service(tmp_path, backend) as found:
        yield found


async def test_categories_reach_get_account_events_and_the_registry(stackone: Registry) -> None:
    """An account's `categories` (its provider's, as StackOne lists them) are on its event,
    GetAccount from StackOne and from the registry, and kept on its deletion, which
    carries no account of its own."""
    stream = stackone.stub.StreamAccountEvents(pb.StreamAccountEventsRequest())
    await attached(stream)
    account_id = await stackone.account(owner="t-c", provider="greenhouse")
    created = await next_event(stream, timeout=10)
    await stackone.holds([account_id])
    fetched = await stackone.stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
    registered = await stackone.stub.GetAccount(
        pb.GetAccountRequest(account_id=account_id, read_from=pb.READ_FROM_REGISTRY)
    )
    raw = await stackone.emulator.get(
        f"/accounts/{account_id}", auth=(stackone.service.settings.emulator_api_key, "")
    )
    await stackone.delete(account_id)
    deleted = await next_event(stream, timeout=10)
    stream.cancel()
    assert deleted.type == "account.deleted"
    carried = [created.account, fetched, registered, deleted.account]
    assert [list(account.categories) for account in carried] == [["ats"]] * 4
    assert facts.problems(facts.LINKED_ACCOUNT, raw.json()) == []


async def test_the_cli_gets_a_session_with_its_attempt(service: Runtime) -> None:
    """`sessions create --connector-profile-id` sends it; `sessions get ID --json` shows
    the session's profile and its authenticated attempt with the linked account."""
    assert service.emulator is not None
    cli = [sys.executable, "-m", "service.cli", "--target", service.grpc_target, "--json"]
    create = ["sessions", "create", "--owner-id", "t-1", "--owner-name", "T"]
    profile = ["--connector-profile-id", PROFILE_ID]
    code, out, _ = await run_to_end([*cli, *create, *profile], timeout=20)
    assert code == 0
    created = orjson.loads(out)
    async with httpx.AsyncClient(base_url=service.emulator.base_url) as http:
        linked = (await http.post("/emulator/link", json={"token": created["token"]})).json()
    code, out, _ = await run_to_end([*cli, "sessions", "get", created["id"]], timeout=20)
    assert code == 0
    fetched = orjson.loads(out)
    assert fetched["connector_profile_id"] == PROFILE_ID
    attempt = fetched["latest_connection_attempt"]
    assert attempt["status"] == "CONNECTION_ATTEMPT_STATUS_AUTHENTICATED"
    assert attempt["account_id"] == linked["id"]
