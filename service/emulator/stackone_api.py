"""The emulator's StackOne API room: connect sessions and accounts, behind StackOne's edge.

    POST   /connect_sessions                 201 session with token and auth_link_url
                                             (404 when its account_id is unknown)
    POST   /connect_sessions/authenticate    201 session of a token (401 if unknown/expired)
    GET    /connect_sessions/{id}            200 session (expired or not) with its latest
                                             connection attempt, 404
    GET    /accounts                         200 array; page, page_size and filters
    GET    /accounts/{id}                    200 account, 404
    DELETE /accounts/{id}                    200 account (status inactive); account.deleted
    GET    /connect?token=...                the hosted Auth Link page, with a Link button

They take HTTP Basic auth with `EmulatorConfig.api_key` as the user name (`serve` sets it
from STACKONE_CONNECT_EMULATOR_API_KEY). Their shapes are StackOne's: today's (its
2026-06 models: sessions carry `connector_profile_id`, `integration_id` its alias, and
`latest_connection_attempt`; accounts `shared` and `categories`; `organization_id` a
string) unless `EmulatorConfig.sdk_shapes` is "4.34" (@stackone/stackone-client-ts 4.34:
`integration_id` alone, no attempt, no categories) or "4.28" (the number
`organization_id`, none of these), the version tests/sdk checks with the SDK itself.
A `connector_profile_id` (or its alias) is kept as sent: the emulator does not check that
the profile exists.

Every request to a StackOne endpoint (the Hub's included) passes `stackone_edge`, in
order: it is counted in the stats; the rate limit decides at arrival (StackOne counts
arrivals) whether it is refused, a refused call taking no slot; `latency` delays every
answer, 429s included, as a network round trip would; then injected faults; then the API
key check (the Hub's endpoints check their session token instead); then the handler.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import html
import math
import secrets
import time
import uuid
from datetime import timedelta

import orjson
from aiohttp import web
from pydantic import JsonValue

from service.emulator.accounts import delete_account
from service.emulator.answers import (
    Handler,
    base_url,
    body_as,
    emulator_state,
    live_session_of,
    stackone_error,
    with_account,
)
from service.emulator.bodies import SessionBody, TokenBody
from service.emulator.state import (
    Account,
    EmulatorState,
    Fault,
    RecordedRequest,
    Session,
    iso,
    now,
)

_DEFAULT_EXPIRY = 1800  # seconds


def _username(request: web.Request) -> str | None:
    """The Basic-auth user name (StackOne's API key), or None without Basic auth."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode().partition(":")[0]
    except (ValueError, UnicodeDecodeError):
        return None


def _authorized(request: web.Request) -> bool:
    username = _username(request)
    if username is None:
        return False
    return hmac.compare_digest(username.encode(), emulator_state(request).config.api_key.encode())


def _route(request: web.Request) -> str:
    """`METHOD /route/{template}` of a request, e.g. `GET /accounts/{account_id}`."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else request.path}"


@web.middleware
async def stackone_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Plays StackOne's edge on its endpoints: stats, rate limit, latency, faults, auth.

    The order is the module docstring's.
    """
    if request.path.startswith(("/emulator/", "/connect/")) or request.path == "/connect":
        return await handler(request)
    state = emulator_state(request)
    route = _route(request)
    state.calls[route] += 1
    state.in_flight[route] += 1
    state.most_in_flight[route] = max(state.most_in_flight[route], state.in_flight[route])
    try:
        return await _as_stackone(request, handler, state)
    finally:
        state.in_flight[route] -= 1


async def _as_stackone(
    request: web.Request, handler: Handler, state: EmulatorState
) -> web.StreamResponse:
    """The rest of `stackone_edge`, for a request it counts as in flight."""
    state.requests.append(await _recorded(request))
    wait = state.admit(_username(request) or "", time.monotonic())
    await asyncio.sleep(state.config.latency)
    if wait is not None:
        state.rate_limited += 1
        retry_after = str(max(1, math.ceil(wait)))
        return stackone_error(429, "Too Many Requests", **{"Retry-After": retry_after})
    fault = next((f for f in state.faults if f.matches(request.method, request.path)), None)
    if fault is not None:
        if fault.times is not None:
            fault.times -= 1
        await asyncio.sleep(fault.delay)
        if fault.reset:
            if request.transport is not None:  # None: the client is gone already
                request.transport.close()
            raise ConnectionResetError("emulator fault: connection reset")
        if fault.malformed:
            return web.Response(status=200, text="{not json", content_type="application/json")
        if (answer := _fault_answer(fault)) is not None:
            return answer
    # The Hub's endpoints check the session token instead of the API key.
    if not request.path.startswith("/hub/") and not _authorized(request):
        return stackone_error(401, "Unauthorized")
    return await handler(request)


async def _recorded(request: web.Request) -> RecordedRequest:
    """A request as it arrived (its body stays readable: aiohttp keeps what it read)."""
    raw = await request.read()
    body: JsonValue
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = raw.decode(errors="replace")
    return RecordedRequest(
        method=request.method,
        path=request.raw_path.partition("?")[0],
        query=list(request.query.items()),
        headers={key.lower(): value for key, value in request.headers.items()},
        body=body,
    )


def _fault_answer(fault: Fault) -> web.StreamResponse | None:
    """The answer a fault gives, or None for one that only delays."""
    retry_after = fault.retry_after
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    if isinstance(retry_after, float | int):
        headers = {"Retry-After": f"{retry_after:g}"}
    if fault.body is not None:
        return web.Response(
            status=fault.status or 200,
            body=fault.body.encode() * fault.repeat,
            content_type="application/json",
            headers=headers,
        )
    if fault.status is not None:
        return stackone_error(fault.status, f"Emulated fault {fault.status}", **headers)
    return None


async def create_session(request: web.Request) -> web.Response:
    """POST /connect_sessions."""
    state = emulator_state(request)
    body = await body_as(request, SessionBody, "not a connect session")
    profile_id, alias = body.connector_profile_id, body.integration_id
    if profile_id and alias and profile_id != alias:
        return stackone_error(
            400, "integration_id is the deprecated name of connector_profile_id: send one"
        )
    if body.account_id and body.account_id not in state.accounts:
        return stackone_error(404, f"Account {body.account_id} not found")
    session = _new_session(state, body, base_url(request))
    state.sessions[session.token] = session
    state.changed()
    return web.json_response(state.session_answer(session), status=201)


def _new_session(state: EmulatorState, body: SessionBody, base: str) -> Session:
    config, created, token = state.config, now(), "cst_" + secrets.token_urlsafe(16)
    return Session(
        id=len(state.sessions) + 70000,
        # The SDK 4.34 made it a string (a breaking change); 4.28 had a number.
        organization_id=(
            config.organization_id if config.legacy_shapes else str(config.organization_id)
        ),
        project_id=config.project_id,
        origin_owner_id=body.origin_owner_id,
        origin_owner_name=body.origin_owner_name,
        origin_username=body.origin_username,
        provider=body.provider,
        account_id=body.account_id,
        label=body.label,
        metadata=body.metadata,
        provider_version=body.provider_version,
        connector_profile_id=body.connector_profile_id or body.integration_id,
        categories=list(body.categories or []),
        type=body.type or "production",
        multiple=bool(body.multiple),
        external_trigger_token=str(uuid.uuid4()),
        created_at=iso(created),
        expires_at=created + timedelta(seconds=body.expires_in or _DEFAULT_EXPIRY),
        token=token,
        auth_link_url=f"{base}/connect?token={token}",
    )


async def authenticate_session(request: web.Request) -> web.Response:
    """POST /connect_sessions/authenticate."""
    body = await body_as(request, TokenBody, "not a session token")
    expired = "Invalid or expired connect session token"
    session = live_session_of(request, body.token, web.HTTPUnauthorized, expired)
    answer = emulator_state(request).session_answer(session, with_token=False)
    return web.json_response(answer, status=201)


async def get_session(request: web.Request) -> web.Response:
    """GET /connect_sessions/{id}: StackOne's ids are numbers; any other is not one."""
    raw = request.match_info["session_id"]
    found = emulator_state(request).session_numbered(int(raw)) if raw.isdecimal() else None
    if found is None:
        return stackone_error(404, f"Connect session {raw} not found")
    answer = emulator_state(request).session_answer(found, with_token=False)
    return web.json_response(answer)


def _values(request: web.Request, *names: str) -> set[str]:
    return {value for name in names for value in request.query.getall(name, [])}


async def list_accounts(request: web.Request) -> web.Response:
    """GET /accounts with StackOne's filters and page-number paging."""
    try:
        page = int(request.query.get("page", "0"))
        page_size = int(request.query.get("page_size", "25"))
    except ValueError:
        return stackone_error(400, "page and page_size must be numbers")
    owners = _values(request, "origin_owner_id", "origin_owner_ids")
    providers = _values(request, "provider", "providers")
    ids = _values(request, "account_ids")
    statuses = _values(request, "status")
    state = emulator_state(request)
    matching = [
        account
        for account in state.accounts.values()
        if (not owners or account.origin_owner_id in owners)
        and (not providers or account.provider in providers)
        and (not ids or account.id in ids)
        and (not statuses or account.status in statuses)
    ]
    page_of = matching[page * page_size : (page + 1) * page_size]
    return web.json_response([state.answer(account) for account in page_of])


@with_account
async def get_account(request: web.Request, account: Account) -> web.Response:
    """GET /accounts/{id}."""
    return web.json_response(emulator_state(request).answer(account))


@with_account
async def remove_account(request: web.Request, account: Account) -> web.Response:
    """DELETE /accounts/{id}: answers the account as inactive, removes it, sends deleted."""
    state = emulator_state(request)
    delete_account(state, account)
    return web.json_response(state.answer(account))


async def auth_link_page(request: web.Request) -> web.Response:
    """GET /connect: the hosted Auth Link a person opens in a browser."""
    token = request.query.get("token", "")
    session = emulator_state(request).live_session(token)
    if session is None:
        return web.Response(status=404, text="This link has expired or does not exist.")
    owner = html.escape(session.origin_owner_name)
    provider = html.escape(session.provider or "bamboohr")
    page = f"""<!doctype html><title>StackOne emulator</title>
<h1>Connect {provider} for {owner}</h1>
<p>This is the StackOne emulator's Auth Link. Linking creates the account and sends the
signed <code>account.created</code> webhook.</p>
<button onclick="fetch('/emulator/link',{{method:'POST',
  headers:{{'content-type':'application/json'}},
  body:JSON.stringify({{token:'{html.escape(token)}'}})}}).then(r=>r.json())
  .then(a=>document.body.append('Linked account '+a.id))">Link</button>"""
    return web.Response(text=page, content_type="text/html")


def add_stackone_api(app: web.Application) -> None:
    """Adds StackOne's endpoints and its edge to the emulator `app`."""
    app.middlewares.append(stackone_edge)
    app.router.add_post("/connect_sessions", create_session)
    app.router.add_post("/connect_sessions/authenticate", authenticate_session)
    app.router.add_get("/connect_sessions/{session_id}", get_session)
    app.router.add_get("/accounts", list_accounts)
    app.router.add_get("/accounts/{account_id}", get_account)
    app.router.add_delete("/accounts/{account_id}", remove_account)
    app.router.add_get("/connect", auth_link_page)
