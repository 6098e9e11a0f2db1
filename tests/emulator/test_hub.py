"""The emulator's side of StackOne's Hub (`service/emulator/hub.py`), over real HTTP: the
requests `@stackone/hub` 1.11.4 makes and the answers it reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from google.protobuf.empty_pb2 import Empty

from service.emulator import EMULATOR_STATE, EmulatorConfig, build_emulator_app
from service.emulator.hub import HUB_VERSION, SESSION_HEADER
from service.runtime import Runtime
from service.web import listening
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.streams import attached, next_event

pytestmark = pytest.mark.asyncio
API_KEY = "hub-test-key"
# What the Hub sends with every request (its bundle's fetch calls).
HUB_HEADERS = "content-type,x-hub-session-token,x-hub-version"


@pytest_asyncio.fixture
async def stackone() -> AsyncIterator[httpx.AsyncClient]:
    """A client of a bundled emulator on its own, with its API key."""
    app = build_emulator_app(EmulatorConfig(api_key=API_KEY))
    async with (
        listening(app, "127.0.0.1", 0, shutdown_timeout=0.1) as emulator,
        httpx.AsyncClient(base_url=emulator.base_url, auth=(API_KEY, ""), timeout=5) as http,
    ):
        yield http


async def new_session(http: httpx.AsyncClient, **fields: Any) -> dict[str, str]:
    """The Hub's headers for a fresh connect session of owner `acme`."""
    body = {"origin_owner_id": "acme", "origin_owner_name": "Acme Inc", **fields}
    response = await http.post("/connect_sessions", json=body)
    assert response.status_code == 201, response.text
    return {SESSION_HEADER: response.json()["token"], "x-hub-version": HUB_VERSION}


async def integrations(http: httpx.AsyncClient, hub: dict[str, str], query: str = "") -> list[Any]:
    """The connectors the Hub lists for a session."""
    response = await http.get(f"/hub/connectors{query}", headers=hub)
    assert response.status_code == 200, response.text
    listed: list[Any] = response.json()["integrations"]
    return listed


async def integration_id(http: httpx.AsyncClient, hub: dict[str, str], provider: str) -> str:
    """The id the Hub uses for `provider`'s connector."""
    found = [i for i in await integrations(http, hub) if i["provider"] == provider]
    assert found, f"{provider} is not offered"
    return str(found[0]["integration_id"])


async def submit(
    http: httpx.AsyncClient, hub: dict[str, str], provider: str, **credentials: str
) -> httpx.Response:
    """Submits the Hub's credential form for `provider`."""
    body = {"integration_id": await integration_id(http, hub, provider), "credentials": credentials}
    return await http.post("/hub/accounts", json=body, headers=hub)


async def listed_accounts(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every account, through StackOne's own listing."""
    response = await http.get("/accounts")
    assert response.status_code == 200
    listed: list[dict[str, Any]] = response.json()
    return listed


async def test_hub_endpoints_take_a_live_session_token_not_the_api_key(
    stackone: httpx.AsyncClient,
) -> None:
    """Without a session token (the API key alone) or with an unknown one: 401."""
    assert (await stackone.get("/hub/settings")).status_code == 401
    unknown = {SESSION_HEADER: "cst_unknown"}
    assert (await stackone.get("/hub/connectors", headers=unknown)).status_code == 401
    hub = await new_session(stackone)
    settings = await stackone.get("/hub/settings", headers=hub)
    assert settings.status_code == 200
    assert settings.json() == {"enabled_features": []}


async def test_the_sessions_categories_and_provider_filter_the_connectors(
    stackone: httpx.AsyncClient,
) -> None:
    """Categories and provider of the session (and the Hub's ?provider=) pick what is listed."""
    hris = await new_session(stackone, categories=["hris"])
    assert [i["provider"] for i in await integrations(stackone, hris)] == [
        "bamboohr",
        "hibob",
        "personio",
    ]
    ats = await new_session(stackone, categories=["ats"])
    assert [i["provider"] for i in await integrations(stackone, ats)] == ["greenhouse", "lever"]
    one = await new_session(stackone, provider="bamboohr")
    assert [i["provider"] for i in await integrations(stackone, one)] == ["bamboohr"]
    assert [i["provider"] for i in await integrations(stackone, hris, "?provider=hibob")] == [
        "hibob"
    ]
    unknown = await new_session(stackone, provider="workday", categories=["hris"])
    [generic] = await integrations(stackone, unknown)
    assert (generic["provider"], generic["name"], generic["type"]) == ("workday", "Workday", "hris")


async def test_a_connector_lists_as_the_hub_reads_it_and_its_form_has_the_fields(
    stackone: httpx.AsyncClient,
) -> None:
    """An integration has the Hub's `Integration` keys; its config is a form of fields."""
    hub = await new_session(stackone, categories=["hris"])
    [bamboohr, *_] = await integrations(stackone, hub)
    assert bamboohr["active"] is True
    assert bamboohr["name"] == "BambooHR"
    assert bamboohr["logo_url"].startswith(str(stackone.base_url).rstrip("/") + "/emulator/logos/")
    logo = await stackone.get(bamboohr["logo_url"])
    assert logo.headers["content-type"].startswith("image/svg+xml")
    response = await stackone.get(f"/hub/connectors/{bamboohr['integration_id']}", headers=hub)
    config = response.json()["config"]
    assert config["name"] == "BambooHR"
    assert [(f["key"], f["type"], f["required"]) for f in config["configFields"]] == [
        ("subdomain", "text", True),
        ("api_key", "password", True),
    ]
    ats_only = await new_session(stackone, categories=["ats"])
    hidden = await stackone.get(f"/hub/connectors/{bamboohr['integration_id']}", headers=ats_only)
    assert hidden.status_code == 404


async def test_accepted_credentials_link_an_account_of_the_sessions_owner(
    stackone: httpx.AsyncClient,
) -> None:
    """POST /hub/accounts answers the new account's id; it is the session owner's, active."""
    hub = await new_session(stackone, categories=["hris"], label="HR")
    response = await submit(stackone, hub, "bamboohr", subdomain="acme", api_key="k-1")
    assert response.status_code == 201
    created = response.json()
    assert created["provider"] == "bamboohr"
    [account] = await listed_accounts(stackone)
    assert account["id"] == created["id"]
    assert (account["origin_owner_id"], account["status"], account["label"]) == (
        "acme",
        "active",
        "HR",
    )


async def test_refused_credentials_answer_the_hubs_error_shape_and_link_nothing(
    stackone: httpx.AsyncClient,
) -> None:
    """A blank or `wrong…` key and a missing field are 400s whose message the Hub parses
    into its error state (message + provider_response); no account is made."""
    hub = await new_session(stackone, categories=["hris"])
    for key in ("   ", "wrong-key"):
        refused = await submit(stackone, hub, "bamboohr", subdomain="acme", api_key=key)
        assert refused.status_code == 400
        body = refused.json()
        assert body["statusCode"] == 400
        detail = orjson.loads(body["message"])
        assert detail["message"].startswith("BambooHR refused the credentials")
        assert orjson.loads(detail["provider_response"])["status"] == 401
    missing = await submit(stackone, hub, "bamboohr", api_key="k-1")
    assert missing.status_code == 400
    assert missing.json()["message"] == "Subdomain is required"
    assert await listed_accounts(stackone) == []


async def test_a_key_without_permissions_links_an_account_in_error_with_a_reason(
    stackone: httpx.AsyncClient,
) -> None:
    """A `limited…` key links the account with status error and a reason, as StackOne
    reports an account whose credentials lack a permission."""
    hub = await new_session(stackone, categories=["hris"])
    response = await submit(stackone, hub, "bamboohr", subdomain="acme", api_key="limited-1")
    assert response.status_code == 201
    [account] = await listed_accounts(stackone)
    assert account["status"] == "error"
    [reason] = account["status_reasons"]
    assert reason["code"] == "insufficient_permissions"


async def test_a_reconnect_session_reopens_its_account_and_no_other(
    stackone: httpx.AsyncClient,
) -> None:
    """A session with account_id: settings name the account, the Hub reads it back
    (without secrets) and re-links it in place; other sessions cannot see it."""
    first = await new_session(stackone, categories=["hris"])
    created = await submit(stackone, first, "bamboohr", subdomain="acme", api_key="limited-1")
    account_id = created.json()["id"]
    again = await new_session(stackone, categories=["hris"], account_id=account_id)
    settings = await stackone.get("/hub/settings", headers=again)
    assert settings.json()["existing_account_id"] == account_id
    reopened = (await stackone.get(f"/hub/accounts/{account_id}", headers=again)).json()
    assert reopened["provider"] == "bamboohr"
    assert reopened["setupInformation"] == {"subdomain": "acme"}
    assert reopened["integrationId"] == await integration_id(stackone, again, "bamboohr")
    body = {
        "integration_id": reopened["integrationId"],
        "credentials": {"subdomain": "acme", "api_key": "k-2"},
    }
    patched = await stackone.patch(f"/hub/accounts/{account_id}", json=body, headers=again)
    assert patched.status_code == 200
    assert patched.json()["id"] == account_id
    [account] = await listed_accounts(stackone)
    assert (account["id"], account["status"], account["status_reasons"]) == (
        account_id,
        "active",
        None,
    )
    assert (await stackone.get(f"/hub/accounts/{account_id}", headers=first)).status_code == 404
    other = await stackone.patch(f"/hub/accounts/{account_id}", json=body, headers=first)
    assert other.status_code == 404


async def test_cors_lets_the_hub_call_from_loopback_pages_and_only_the_hub(
    stackone: httpx.AsyncClient,
) -> None:
    """Preflights of /hub/ from a loopback page are answered (the Hub's headers allowed),
    answers and errors carry Access-Control-Allow-Origin; the API-key endpoints answer no
    CORS."""
    preflight = {
        "origin": "http://127.0.0.1:8000",
        "access-control-request-method": "PATCH",
        "access-control-request-headers": HUB_HEADERS,
    }
    answer = await stackone.options("/hub/accounts/123", headers=preflight)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.headers["access-control-allow-headers"] == HUB_HEADERS
    assert "PATCH" in answer.headers["access-control-allow-methods"].split(",")
    hub = await new_session(stackone)
    listed = await stackone.get("/hub/connectors", headers=hub)
    assert listed.headers["access-control-allow-origin"] == "*"
    refused = await stackone.get("/hub/settings", headers={SESSION_HEADER: "nope"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "*"
    api = await stackone.options("/connect_sessions", headers=preflight)
    assert "access-control-allow-origin" not in api.headers


async def test_oauth_connectors_explain_that_they_need_the_real_stackone(
    stackone: httpx.AsyncClient,
) -> None:
    """An OAuth connector has no fields and a notice; its pop-up fails the connection
    attempt with the explanation, which the Hub polls; a cancelled attempt says so."""
    hub = await new_session(stackone, categories=["ats"])
    lever = await integration_id(stackone, hub, "lever")
    config = (await stackone.get(f"/hub/connectors/{lever}", headers=hub)).json()["config"]
    assert (config["type"], config["configFields"]) == ("oauth2", [])
    assert "real StackOne" in config["configNotices"][0]["description"]
    attempt = (await stackone.post("/hub/connection_attempts", headers=hub)).json()["id"]
    poll = f"/hub/connection_attempts/{attempt}"
    assert (await stackone.get(poll, headers=hub)).json()["status"] == "pending"
    token = hub[SESSION_HEADER]
    popup = await stackone.get(
        f"/connect/oauth2/{lever}", params={"token": token, "connection_attempt_id": attempt}
    )
    assert popup.status_code == 200
    polled = (await stackone.get(poll, headers=hub)).json()
    assert polled["status"] == "error"
    assert "STACKONE_CONNECT_API_KEY" in polled["error"]["description"]
    second = (await stackone.post("/hub/connection_attempts", headers=hub)).json()["id"]
    assert (
        await stackone.delete(f"/hub/connection_attempts/{second}", headers=hub)
    ).status_code == 204
    cancelled = await stackone.get(f"/hub/connection_attempts/{second}", headers=hub)
    assert cancelled.json()["status"] == "cancelled"


async def test_linking_through_the_hub_delivers_the_signed_account_created_webhook(
    service: Runtime, stub: pb_grpc.ConnectServiceAsyncStub
) -> None:
    """The account the Hub links reaches subscribers as a verified account.created: the
    emulator signed the webhook and the gateway accepted it."""
    assert service.emulator is not None
    api_key = service.emulator.runner.app[EMULATOR_STATE].config.api_key
    stream = stub.StreamAccountEvents(pb.StreamAccountEventsRequest(from_now=Empty()))
    await attached(stream)
    async with httpx.AsyncClient(
        base_url=service.emulator.base_url, auth=(api_key, ""), timeout=5
    ) as http:
        hub = await new_session(http, categories=["hris"])
        created = await submit(http, hub, "hibob", service_user_id="svc", service_user_token="t")
    event = await next_event(stream)
    stream.cancel()
    assert (event.type, event.account.id) == ("account.created", created.json()["id"])
    assert event.verification == pb.VERIFICATION_VERIFIED
    assert event.account.status == pb.ACCOUNT_STATUS_ACTIVE
    deliveries = service.emulator.runner.app[EMULATOR_STATE].deliveries
    assert [(d.event, d.status) for d in deliveries] == [("account.created", 200)]


async def test_a_deeply_nested_body_is_400_not_a_crash(stackone: httpx.AsyncClient) -> None:
    """100,000 nested arrays (json.loads would recurse past Python's limit, a 500): the
    emulator answers 400 as StackOne does to a body it cannot read, on both kinds of route."""
    deep = b"[" * 100_000 + b"]" * 100_000
    json_type = {"content-type": "application/json"}
    answer = await stackone.post("/connect_sessions", content=deep, headers=json_type)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"] == "body is not JSON"
    hub = await new_session(stackone)
    answer = await stackone.post("/hub/accounts", content=deep, headers={**hub, **json_type})
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize(
    ("path", "method", "body", "named"),
    [
        ("/emulator/faults", "POST", {"status": "abc"}, "status"),
        ("/emulator/faults", "POST", {"delay": -1}, "delay"),
        ("/emulator/faults", "POST", {"stauts": 500}, "stauts"),
        ("/emulator/behaviour", "PUT", {"latency": True}, "latency"),
        ("/emulator/behaviour", "PUT", {"rate_limit": 0}, "rate_limit"),
        ("/emulator/webhooks", "PUT", {"enabled": "no"}, "enabled"),
    ],
)
async def test_an_emulator_action_body_it_does_not_take_is_400_naming_the_field(
    stackone: httpx.AsyncClient, path: str, method: str, body: dict[str, Any], named: str
) -> None:
    """Typed bodies: a wrong type, a bound crossed or a misspelt key is refused whole (a
    `Fault(**body)` once took `{"status": "abc"}`), and nothing changes."""
    before = (await stackone.put("/emulator/behaviour", json={})).json()
    answer = await stackone.request(method, path, json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"].split(": ", 1)[1].startswith(f"{named}: ")
    assert (await stackone.put("/emulator/behaviour", json={})).json() == before
    assert (await stackone.get("/accounts")).status_code == 200, "no fault was added"
