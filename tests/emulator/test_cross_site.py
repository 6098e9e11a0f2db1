"""The emulator refuses what a web page elsewhere could make the browser send it
(`service/emulator/origins.py`): cross-site "simple" requests change nothing, while its own
Auth Link page, the Hub on a loopback page and clients that are not browsers still work."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from service.emulator import EmulatorConfig, build_emulator_app
from service.emulator.connectors import CONNECTOR_VERSIONS
from service.emulator.hub import HUB_VERSION, SESSION_HEADER
from service.emulator.origins import SAFE_METHODS
from service.web import listening

pytestmark = pytest.mark.asyncio
API_KEY = "cross-site-key"
EVIL = "http://evil.example"
# What a form post (enctype text/plain) from a page of another site carries.
CROSS_SITE = {"origin": EVIL, "sec-fetch-site": "cross-site", "content-type": "text/plain"}
FAULTED = "/accounts/faulted"


@dataclass
class Emulator:
    """A bundled emulator with an account, sessions, a pending OAuth attempt and a fault."""

    http: httpx.AsyncClient
    account_id: str
    link_token: str
    hub: dict[str, str]
    reconnect: dict[str, str]
    attempt_id: str
    integration_id: str
    origin: str
    profile_id: str


async def _session(http: httpx.AsyncClient, **fields: Any) -> str:
    body = {"origin_owner_id": "acme", "origin_owner_name": "Acme Inc", **fields}
    response = await http.post("/connect_sessions", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def _hub_headers(token: str) -> dict[str, str]:
    return {SESSION_HEADER: token, "x-hub-version": HUB_VERSION}


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """The emulator on its own, in the state each refused request would change."""
    app = build_emulator_app(EmulatorConfig(api_key=API_KEY, deliver_webhooks=False))
    async with (
        listening(app, "127.0.0.1", 0, shutdown_timeout=0.1) as listener,
        httpx.AsyncClient(base_url=listener.base_url, auth=(API_KEY, ""), timeout=5) as http,
    ):
        created = await http.post("/emulator/accounts", json={"provider": "bamboohr"})
        account_id = created.json()["id"]
        fault = {"path_prefix": FAULTED, "status": 503}
        assert (await http.post("/emulator/faults", json=fault)).status_code == 201
        hub = _hub_headers(await _session(http, categories=["hris"]))
        attempt = await http.post("/hub/connection_attempts", headers=hub)
        listed = (await http.get("/hub/connectors", headers=hub)).json()["integrations"]
        bamboohr = next(i for i in listed if i["provider"] == "bamboohr")
        profile_id = (await http.get("/connector_profiles")).json()["data"][0]["id"]
        pin = {"pinned_version": CONNECTOR_VERSIONS[0]}  # for the DELETE to have one to remove
        pinned = await http.put(f"/connector_profiles/{profile_id}/pinned_version", json=pin)
        assert pinned.status_code == 200, pinned.text
        yield Emulator(
            http,
            account_id,
            link_token=await _session(http),
            hub=hub,
            reconnect=_hub_headers(await _session(http, account_id=account_id)),
            attempt_id=attempt.json()["id"],
            integration_id=bamboohr["integration_id"],
            origin=listener.base_url,
            profile_id=profile_id,
        )


async def state(emulator: Emulator) -> dict[str, Any]:
    """What the emulator's API shows of everything the refused requests aim at."""
    http = emulator.http
    kept = len((await http.get("/emulator/requests")).json())
    calls = (await http.get("/emulator/stats")).json()["calls"]
    attempt = await http.get(
        f"/hub/connection_attempts/{emulator.attempt_id}", headers=emulator.hub
    )
    return {
        "accounts": (await http.get("/accounts")).json(),
        "webhooks": (await http.put("/emulator/webhooks", json={})).json(),
        "behaviour": (await http.put("/emulator/behaviour", json={})).json(),
        "fault still set": (await http.get(FAULTED)).status_code == 503,
        "requests kept": kept > 0,
        "sessions created": calls.get("POST /connect_sessions"),
        "attempt": attempt.json()["status"],
        "pin": (await http.get(f"/connector_profiles/{emulator.profile_id}/pinned_version")).json(),
    }


def _credentials(emulator: Emulator) -> dict[str, Any]:
    credentials = {"subdomain": "acme", "api_key": "evil-key"}
    return {"integration_id": emulator.integration_id, "credentials": credentials}


def _basic() -> dict[str, str]:
    # A form's action URL may carry credentials (http://key:@127.0.0.1/...), which a
    # browser sends as Basic auth; the emulator's key is no secret.
    return {"authorization": "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()}


# method, path, body (None: none), headers
Request = tuple[str, str, dict[str, Any] | None, dict[str, str]]
# Every route that changes state, with what a page elsewhere would send it.
REQUESTS: dict[str, Callable[[Emulator], Request]] = {
    "POST /emulator/link": lambda e: ("POST", "/emulator/link", {"token": e.link_token}, {}),
    "POST /emulator/accounts": lambda e: ("POST", "/emulator/accounts", {"provider": "x"}, {}),
    "PATCH /emulator/accounts/{account_id}": lambda e: (
        "PATCH", f"/emulator/accounts/{e.account_id}", {"status": "error"}, {}
    ),
    "POST /emulator/accounts/{account_id}/break": lambda e: (
        "POST", f"/emulator/accounts/{e.account_id}/break", {"status": "expired"}, {}
    ),
    "POST /emulator/accounts/{account_id}/mend": lambda e: (
        "POST", f"/emulator/accounts/{e.account_id}/mend", {}, {}
    ),
    "PUT /emulator/webhooks": lambda e: (
        "PUT", "/emulator/webhooks", {"url": f"{EVIL}/", "enabled": False}, {}
    ),
    "POST /emulator/faults": lambda e: ("POST", "/emulator/faults", {"status": 500}, {}),
    "DELETE /emulator/faults": lambda e: ("DELETE", "/emulator/faults", None, {}),
    "PUT /emulator/behaviour": lambda e: ("PUT", "/emulator/behaviour", {"rate_limit": 1}, {}),
    "DELETE /emulator/requests": lambda e: ("DELETE", "/emulator/requests", None, {}),
    "POST /connect_sessions": lambda e: (
        "POST", "/connect_sessions", {"origin_owner_id": "evil", "origin_owner_name": "E"},
        _basic(),
    ),
    "POST /connect_sessions/authenticate": lambda e: (
        "POST", "/connect_sessions/authenticate", {"token": e.link_token}, _basic()
    ),
    "DELETE /accounts/{account_id}": lambda e: (
        "DELETE", f"/accounts/{e.account_id}", None, _basic()
    ),
    # The Hub's need the session token header, which no simple request carries: even
    # sent with it (after a preflight, were one answered) they are refused.
    "POST /hub/accounts": lambda e: ("POST", "/hub/accounts", _credentials(e), e.hub),
    "PATCH /hub/accounts/{account_id}": lambda e: (
        "PATCH", f"/hub/accounts/{e.account_id}", _credentials(e), e.reconnect
    ),
    "POST /hub/connection_attempts": lambda e: (
        "POST", "/hub/connection_attempts", {"token": e.hub[SESSION_HEADER]}, e.hub
    ),
    "DELETE /hub/connection_attempts/{attempt_id}": lambda e: (
        "DELETE", f"/hub/connection_attempts/{e.attempt_id}", None, e.hub
    ),
    "PUT /connector_profiles/{profile_id}/pinned_version": lambda e: (
        "PUT", f"/connector_profiles/{e.profile_id}/pinned_version",
        {"pinned_version": CONNECTOR_VERSIONS[-1]}, _basic(),
    ),
    "DELETE /connector_profiles/{profile_id}/pinned_version": lambda e: (
        "DELETE", f"/connector_profiles/{e.profile_id}/pinned_version", None, _basic()
    ),
}  # fmt: skip


async def send(
    emulator: Emulator, name: str, headers: dict[str, str], *, json_body: bool = False
) -> httpx.Response:
    """Sends the request `name` of `REQUESTS` with `headers`, its body as text or JSON."""
    method, path, body, extra = REQUESTS[name](emulator)
    content = None if body is None else orjson.dumps(body)
    if json_body and body is not None:
        headers = {**headers, "content-type": "application/json"}
    elif body is None:
        headers = {key: value for key, value in headers.items() if key != "content-type"}
    # No client auth: the Basic header, where there is one, comes from `extra`.
    return await emulator.http.request(
        method, path, content=content, headers={**extra, **headers}, auth=None
    )


async def test_every_route_that_changes_state_is_checked() -> None:
    """The table covers each route not answering only GET, HEAD or OPTIONS."""
    app = build_emulator_app(EmulatorConfig(api_key=API_KEY))
    routes = {
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.method not in SAFE_METHODS and route.resource is not None
    }
    assert routes == set(REQUESTS)


@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_a_cross_site_simple_request_is_refused_and_changes_nothing(
    emulator: Emulator, name: str
) -> None:
    """A text/plain request from a page of another site gets a 4xx; the state is as before."""
    before = await state(emulator)
    response = await send(emulator, name, CROSS_SITE)
    assert 400 <= response.status_code < 500, response.text
    assert "access-control-allow-origin" not in response.headers
    assert await state(emulator) == before


@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_json_from_another_origin_is_refused_too(emulator: Emulator, name: str) -> None:
    """The origin check holds alone: JSON (which needs a preflight) from another site, 403."""
    before = await state(emulator)
    headers = {"origin": EVIL, "sec-fetch-site": "cross-site"}
    response = await send(emulator, name, headers, json_body=True)
    assert response.status_code == 403, response.text
    assert await state(emulator) == before


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_body_not_declared_json_is_refused_whoever_sends_it(
    emulator: Emulator, content_type: str
) -> None:
    """The content-type check holds alone: a simple content type gets 415, no account."""
    before = await state(emulator)
    headers = {"content-type": content_type}
    response = await send(emulator, "POST /emulator/link", headers)
    assert response.status_code == 415
    assert await state(emulator) == before


async def test_a_browser_without_origin_but_marked_cross_site_is_refused(
    emulator: Emulator,
) -> None:
    """Sec-Fetch-Site alone (no Origin header) is enough to refuse a cross-site request."""
    headers = {"sec-fetch-site": "cross-site"}
    response = await send(emulator, "POST /emulator/accounts", headers, json_body=True)
    assert response.status_code == 403


async def test_a_name_re_pointed_at_loopback_is_refused(emulator: Emulator) -> None:
    """DNS rebinding: a request addressed to another name, even same-origin, gets 403."""
    before = await state(emulator)
    port = emulator.origin.rsplit(":", 1)[1]
    rebound = {"host": f"evil.example:{port}", "origin": f"{EVIL}:{port}"}
    response = await send(emulator, "POST /emulator/accounts", rebound, json_body=True)
    assert response.status_code == 403
    assert (await emulator.http.get("/emulator/deliveries", headers=rebound)).status_code == 403
    assert await state(emulator) == before


async def test_the_hubs_cors_answers_loopback_pages_only(emulator: Emulator) -> None:
    """A preflight from a loopback page is answered; from another site, 403 without CORS."""
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-hub-session-token",
    }
    for page in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        answer = await emulator.http.options("/hub/accounts", headers={**preflight, "origin": page})
        assert answer.status_code == 204, page
        assert answer.headers["access-control-allow-origin"] == "*"
    for page in (EVIL, "null", "http://127.0.0.1.evil.example"):
        refused = await emulator.http.options(
            "/hub/accounts", headers={**preflight, "origin": page}
        )
        assert refused.status_code == 403, page
        assert "access-control-allow-origin" not in refused.headers


async def test_the_pages_that_may_change_the_emulator_still_can(emulator: Emulator) -> None:
    """The Auth Link page's own post (same origin) links; the Hub on a loopback page links."""
    own_page = {"origin": emulator.origin, "sec-fetch-site": "same-origin"}
    linked = await send(emulator, "POST /emulator/link", own_page, json_body=True)
    assert linked.status_code == 201, linked.text
    hub_page = {"origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-site"}
    through_hub = await send(emulator, "POST /hub/accounts", hub_page, json_body=True)
    assert through_hub.status_code in {200, 201}, through_hub.text  # new, or acme's re-opened
    assert through_hub.headers["access-control-allow-origin"] == "*"
    listed = {account["id"] for account in (await emulator.http.get("/accounts")).json()}
    assert {linked.json()["id"], through_hub.json()["id"]} <= listed


async def test_the_auth_link_page_posts_json(emulator: Emulator) -> None:
    """The hosted page's Link button declares its JSON body, so its own post passes."""
    page = await emulator.http.get("/connect", params={"token": emulator.link_token})
    assert "'content-type':'application/json'" in page.text
