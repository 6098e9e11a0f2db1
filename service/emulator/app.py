"""The StackOne emulator: the same endpoints, shapes, auth check and error bodies as
StackOne (per shared/stackone/README.md), accounts in memory, signed webhooks.

It is an independent implementation of the contract (it does not import our client), so
tests of the client against it mean something. StackOne endpoints:

    POST   /connect_sessions                 201 session with token and auth_link_url
                                             (404 when its account_id is unknown)
    POST   /connect_sessions/authenticate    201 session of a token (401 if unknown/expired)
    GET    /accounts                         200 array; page, page_size and filters
    GET    /accounts/{id}                    200 account, 404
    DELETE /accounts/{id}                    200 account (status inactive); account.deleted

They take HTTP Basic auth with `EmulatorConfig.api_key` as the user name (`serve` sets it
from STACKONE_CONNECT_EMULATOR_API_KEY). Their shapes are StackOne's SDK's: today's
(@stackone/stackone-client-ts 4.34: `organization_id` a string, `integration_id` on
sessions, `shared` on accounts) unless `EmulatorConfig.sdk_shapes` is "4.28" (the number
`organization_id`, neither field), the version tests/sdk checks with the SDK itself.

Emulator-only actions (no auth):

    POST   /emulator/link                    {"token", "provider"?, "status"?, "status_reasons"?}
                                             completes the Hub for a session with StackOne's
                                             rules (see `accounts.link_account`): 201 and
                                             account.created for a new account, 200 and
                                             account.updated for a re-connected one
    POST   /emulator/accounts                create an account directly; account.created
    PATCH  /emulator/accounts/{id}           {"status"?, "status_reasons"?, "label"?};
                                             account.updated
    POST   /emulator/accounts/{id}/break     {"status"?, "status_reasons"?}: the account goes
                                             to error (default), expired or suspended, with
                                             StackOne-like reasons; account.updated
    POST   /emulator/accounts/{id}/mend      back to active, reasons cleared; account.updated
    PUT    /emulator/webhooks                {"url"?, "secret"?, "enabled"?}
    GET    /emulator/deliveries              every delivery attempt
    POST   /emulator/faults                  inject a fault (see `Fault`); DELETE clears all
    PUT    /emulator/behaviour               {"latency"?, "rate_limit"?, "rate_window"?}
                                             plays a real StackOne: latency before every
                                             answer, a per-key sliding-window rate limit
    GET    /emulator/stats                   {"calls": {"GET /accounts/{account_id}": n, ...},
                                             "most_in_flight": {route: n}, "rate_limited": n}:
                                             StackOne-endpoint requests that arrived, the most
                                             of a route answered at once, and how many got
                                             the emulated 429
    GET    /emulator/requests                the last 1,000 StackOne-endpoint requests as
                                             sent (method, path, query, headers, body), for
                                             checking clients against StackOne's schemas;
                                             DELETE forgets them
    GET    /connect?token=...                the hosted Auth Link page, with a Link button

The endpoints StackOne's Hub calls (`/hub/...`, authenticated by the session token) are in
`hub`.

What a web page elsewhere could make a browser send is refused before anything else
(`origins`): requests addressed to a name that is not loopback, requests that change state
sent from another origin (the Hub's from loopback pages excepted), and bodies not
declared `application/json`.

Every request to a StackOne endpoint passes, in order: it is counted in the stats; the
rate limit decides at arrival (StackOne counts arrivals) whether it is refused, a
refused call taking no slot; `latency` delays every answer, 429s included, as a network
round trip would; then injected faults; then the API key check; then the handler.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import logging
import math
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from service.emulator.accounts import (
    AccountNotFound,
    LinkError,
    link_account,
    new_account,
    update_account,
)
from service.emulator.accounts import iso as _iso
from service.emulator.accounts import now as _now
from service.emulator.bodies import BadBody, BehaviourBody, FaultBody, WebhooksBody, parsed
from service.emulator.origins import refusal
from service.events.model import AccountEventType
from service.tracing import current_traceparent

_log = logging.getLogger(__name__)
# StackOne's, as its SDK (@stackone/stackone-client-ts 4.34) lists them.
CATEGORIES = frozenset(
    {
        *("ats", "hris", "hris-legacy", "crm", "iam", "marketing", "lms", "stackone"),
        *("documents", "ticketing", "screening", "messaging", "accounting", "scheduling"),
    }
)
CURRENT_SHAPES = "4.34"
SDK_428_SHAPES = "4.28"
SDK_SHAPES = (CURRENT_SHAPES, SDK_428_SHAPES)
"""The SDK versions whose answer shapes the emulator can play."""
SESSION_TYPES = frozenset({"production", "test"})
# What a session keeps that StackOne does not answer with.
_INTERNAL_SESSION_KEYS = frozenset({"expires_at", "multiple", "provider_version"})
REQUESTS_KEPT = 1000
DELIVERY_ATTEMPTS = 6
DELIVERY_BACKOFF = 0.05
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sign_webhook(secret: str, body: bytes) -> str:
    """StackOne's signature: unpadded base64url of HMAC-SHA256(secret, raw body)."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass
class EmulatorConfig:
    """How the emulator behaves; webhook settings can change at run time."""

    api_key: str
    webhook_url: str | None = None
    webhook_secret: str | None = None
    deliver_webhooks: bool = True
    public_base_url: str | None = None
    project_id: str = "proj_emulator"
    organization_id: int = 41  # answered as text, or as a number in the 4.28 shapes
    sdk_shapes: str = CURRENT_SHAPES  # one of SDK_SHAPES
    latency: float = 0.0
    rate_limit: int | None = None
    rate_window: float = 60.0

    def behaviour(self) -> dict[str, Any]:
        """The settings `PUT /emulator/behaviour` changes, as it answers them."""
        return {
            "latency": self.latency,
            "rate_limit": self.rate_limit,
            "rate_window": self.rate_window,
        }


@dataclass
class Fault:
    """A failure injected into StackOne endpoints whose path starts with `path_prefix`.

    Attributes:
        path_prefix: e.g. `/accounts/123` (one account) or `/connect_sessions`.
        path: only this exact path (e.g. `/accounts`, the listing alone), when set.
        method: only this HTTP method, or every method when None.
        status: answer with this status and a StackOne error body.
        delay: seconds to wait before answering (or failing).
        retry_after: the Retry-After header to send with `status`.
        reset: drop the connection without an answer.
        malformed: answer 200 with a body that is not JSON.
        body: answer with this body (status `status`, or 200), repeated `repeat` times: an
            odd or huge answer without a huge fault request.
        times: how many requests it applies to; None for all.

    `retry_after` may be text, sent as it is ("inf", an HTTP date).
    """

    path_prefix: str = "/"
    path: str | None = None
    method: str | None = None
    status: int | None = None
    delay: float = 0.0
    retry_after: float | str | None = None
    reset: bool = False
    malformed: bool = False
    body: str | None = None
    repeat: int = 1
    times: int | None = None

    def matches(self, request: web.Request) -> bool:
        """True when this fault applies to `request` and has uses left."""
        return (
            (self.times is None or self.times > 0)
            and request.path.startswith(self.path_prefix)
            and (self.path is None or self.path == request.path)
            and (self.method is None or self.method == request.method)
        )


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A webhook waiting to be delivered, and the trace context it continues ('': none)."""

    webhook: dict[str, Any]
    traceparent: str


@dataclass
class EmulatorState:
    """Everything the emulator knows: sessions, accounts, deliveries, faults."""

    config: EmulatorConfig
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)  # by route, being answered now
    most_in_flight: Counter[str] = field(default_factory=Counter)  # the most at once
    rate_limited: int = 0
    arrivals: dict[str, deque[float]] = field(default_factory=dict)
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUESTS_KEPT))
    outbox: asyncio.Queue[_Delivery] = field(default_factory=asyncio.Queue)
    account_numbers: int = 0  # handed out so far: ids never repeat, even across restarts

    def new_account_id(self) -> str:
        """A StackOne-like numeric string id."""
        self.account_numbers += 1
        return str(58810347712093400000 + self.account_numbers)

    def queue_webhook(self, event: str, account: dict[str, Any]) -> None:
        """Queues a webhook for `account` unless delivery is switched off."""
        if not (self.config.deliver_webhooks and self.config.webhook_url):
            return
        webhook = {
            "event": event,
            "account_id": account["id"],
            "provider": account["provider"],
            "origin_owner_id": account["origin_owner_id"],
            "origin_owner_name": account["origin_owner_name"],
            "origin_username": account.get("origin_username"),
            "project_id": self.config.project_id,
            "event_date": account["updated_at"],
        }
        # The trace of the request that caused it (tracing on), continued by the delivery.
        self.outbox.put_nowait(_Delivery(webhook, current_traceparent()))

    async def wait_for_deliveries(self) -> None:
        """Returns once every queued webhook was delivered or given up on."""
        await self.outbox.join()

    def admit(self, key: str, now: float) -> float | None:
        """Counts a call of API key `key` arriving at `now` against the rate limit.

        Returns None when it is allowed (it then takes a slot), or the seconds until a
        slot frees when it is over the limit (it then takes none).
        """
        limit, window = self.config.rate_limit, self.config.rate_window
        if limit is None:
            return None
        arrivals = self.arrivals.setdefault(key, deque())
        while arrivals and arrivals[0] <= now - window:
            arrivals.popleft()
        if len(arrivals) >= limit:
            # The oldest call in the window leaves it first; more than `limit` may be
            # listed when the limit was lowered at run time, hence the index.
            return arrivals[len(arrivals) - limit] + window - now
        arrivals.append(now)
        return None


EMULATOR_STATE = web.AppKey("emulator_state", EmulatorState)


def stackone_error(status: int, message: str, **headers: str) -> web.Response:
    """An error in StackOne's shape."""
    body = {"statusCode": status, "message": message, "timestamp": _iso(_now())}
    return web.json_response(body, status=status, headers=headers)


def _state(request: web.Request) -> EmulatorState:
    return request.app[EMULATOR_STATE]


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
    return hmac.compare_digest(username.encode(), _state(request).config.api_key.encode())


def _route(request: web.Request) -> str:
    """`METHOD /route/{template}` of a request, e.g. `GET /accounts/{account_id}`."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else request.path}"


@web.middleware
async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses what a browser could send on another site's behalf (see `origins`)."""
    refused = refusal(request, _state(request).config.public_base_url)
    if refused is not None:
        return stackone_error(*refused)
    return await handler(request)


@web.middleware
async def stackone_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Plays StackOne's edge on its endpoints: stats, rate limit, latency, faults, auth.

    The order is the module docstring's.
    """
    if request.path.startswith(("/emulator/", "/connect/")) or request.path == "/connect":
        return await handler(request)
    state = _state(request)
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
    fault = next((f for f in state.faults if f.matches(request)), None)
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


async def _recorded(request: web.Request) -> dict[str, Any]:
    """A request as it arrived (its body stays readable: aiohttp keeps what it read)."""
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = raw.decode(errors="replace")
    return {
        "method": request.method,
        "path": request.raw_path.partition("?")[0],
        "query": [[key, value] for key, value in request.query.items()],
        "headers": {key.lower(): value for key, value in request.headers.items()},
        "body": body,
    }


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


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        # orjson: json.loads (aiohttp's) recurses, and a deeply nested body would be a 500.
        body = orjson.loads(await request.read())
    except (ValueError, RecursionError) as error:
        raise _bad_request("body is not JSON") from error
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    return body


def _bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 to raise, with StackOne's error body."""
    body = {"statusCode": 400, "message": message, "timestamp": _iso(_now())}
    return web.HTTPBadRequest(text=orjson.dumps(body).decode(), content_type="application/json")


_OPTIONAL_TEXTS = (
    *("origin_username", "provider", "provider_version", "account_id", "label"),
    "integration_id",
)


def _session_problem(body: dict[str, Any]) -> str | None:
    for name in ("origin_owner_id", "origin_owner_name"):
        if not isinstance(body.get(name), str) or not body[name]:
            return f"{name} must be a string"
    for name in _OPTIONAL_TEXTS:
        if not isinstance(body.get(name), str | None):
            return f"{name} must be a string"
    categories = body.get("categories") or []
    if not isinstance(categories, list) or not all(c in CATEGORIES for c in categories):
        return f"categories must be a list of: {', '.join(sorted(CATEGORIES))}"
    expires_in = body.get("expires_in") or 1800
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        return "expires_in must be a positive number"
    if body.get("type") not in {*SESSION_TYPES, None}:
        return f"type must be one of: {', '.join(sorted(SESSION_TYPES))}"
    if not isinstance(body.get("multiple"), bool | None):
        return "multiple must be a boolean"
    if not isinstance(body.get("metadata"), dict | None):
        return "metadata must be an object"
    return None


async def create_session(request: web.Request) -> web.Response:
    """POST /connect_sessions."""
    state = _state(request)
    body = await _json_object(request)
    if problem := _session_problem(body):
        return stackone_error(400, problem)
    if body.get("account_id") and body["account_id"] not in state.accounts:
        return stackone_error(404, f"Account {body['account_id']} not found")
    token = "cst_" + secrets.token_urlsafe(16)
    base = state.config.public_base_url or f"{request.scheme}://{request.host}"
    created = _now()
    legacy = state.config.sdk_shapes == SDK_428_SHAPES
    organization_id = state.config.organization_id
    session = {
        "id": len(state.sessions) + 70000,
        # The SDK 4.34 made it a string (a breaking change); 4.28 had a number.
        "organization_id": organization_id if legacy else str(organization_id),
        "project_id": state.config.project_id,
        **{
            k: body.get(k)
            for k in (
                "origin_owner_id",
                "origin_owner_name",
                "origin_username",
                "provider",
                "account_id",
                "label",
                "metadata",
                "provider_version",
                *(() if legacy else ("integration_id",)),
            )
        },
        "categories": body.get("categories") or [],
        "type": body.get("type") or "production",
        "multiple": bool(body.get("multiple")),
        "external_trigger_token": str(uuid.uuid4()),
        "created_at": _iso(created),
        "expires_at": created + timedelta(seconds=body.get("expires_in") or 1800),
        "token": token,
        "auth_link_url": f"{base}/connect?token={token}",
    }
    state.sessions[token] = session
    return web.json_response(_public_session(session), status=201)


def _public_session(session: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in session.items() if key not in _INTERNAL_SESSION_KEYS}


def _live_session(state: EmulatorState, token: object) -> dict[str, Any] | None:
    session = state.sessions.get(token) if isinstance(token, str) else None
    if session is None or session["expires_at"] < _now():
        return None
    return session


async def authenticate_session(request: web.Request) -> web.Response:
    """POST /connect_sessions/authenticate."""
    body = await _json_object(request)
    session = _live_session(_state(request), body.get("token"))
    if session is None:
        return stackone_error(401, "Invalid or expired connect session token")
    public = _public_session(session)
    del public["token"], public["auth_link_url"]
    return web.json_response(public, status=201)


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
    matching = [
        account
        for account in _state(request).accounts.values()
        if (not owners or account["origin_owner_id"] in owners)
        and (not providers or account["provider"] in providers)
        and (not ids or account["id"] in ids)
        and (not statuses or account["status"] in statuses)
    ]
    return web.json_response(matching[page * page_size : (page + 1) * page_size])


def _account_or_404(request: web.Request) -> dict[str, Any] | web.Response:
    account_id = request.match_info["account_id"]
    account = _state(request).accounts.get(account_id)
    if account is None:
        return stackone_error(404, f"Account {account_id} not found")
    return account


async def get_account(request: web.Request) -> web.Response:
    """GET /accounts/{id}."""
    account = _account_or_404(request)
    return account if isinstance(account, web.Response) else web.json_response(account)


async def delete_account(request: web.Request) -> web.Response:
    """DELETE /accounts/{id}: answers the account as inactive, removes it, sends deleted."""
    account = _account_or_404(request)
    if isinstance(account, web.Response):
        return account
    state = _state(request)
    del state.accounts[account["id"]]
    account.update(status="inactive", updated_at=_iso(_now()))
    state.queue_webhook(AccountEventType.DELETED, account)
    return web.json_response(account)


async def link(request: web.Request) -> web.Response:
    """POST /emulator/link: plays "the user completed the Hub" for a session token."""
    state = _state(request)
    body = await _json_object(request)
    session = _live_session(state, body.get("token"))
    if session is None:
        return stackone_error(404, "No live connect session has this token")
    try:
        linked = link_account(
            state,
            session,
            body.get("provider"),
            status=body.get("status") or "active",
            reasons=body.get("status_reasons"),
        )
    except AccountNotFound as error:
        return stackone_error(404, str(error))
    except LinkError as error:
        return stackone_error(400, str(error))
    return web.json_response(linked.account, status=201 if linked.created else 200)


async def create_account(request: web.Request) -> web.Response:
    """POST /emulator/accounts: creates an account without a session."""
    try:
        account = new_account(_state(request), await _json_object(request))
    except LinkError as error:
        return stackone_error(400, str(error))
    return web.json_response(account, status=201)


async def patch_account(request: web.Request) -> web.Response:
    """PATCH /emulator/accounts/{id}: changes an account and sends account.updated."""
    account = _account_or_404(request)
    if isinstance(account, web.Response):
        return account
    try:
        update_account(_state(request), account, await _json_object(request))
    except LinkError as error:
        return stackone_error(400, str(error))
    return web.json_response(account)


# The config attribute each field of `PUT /emulator/webhooks` sets (only the fields given).
_WEBHOOK_SETTINGS = {
    "url": "webhook_url",
    "secret": "webhook_secret",
    "enabled": "deliver_webhooks",
}


async def configure_webhooks(request: web.Request) -> web.Response:
    """PUT /emulator/webhooks: changes where and whether webhooks are delivered."""
    config = _state(request).config
    try:
        body = parsed(WebhooksBody, await _json_object(request))
    except BadBody as error:
        return stackone_error(400, f"not a webhook setting: {error}")
    for field_name, value in body.model_dump(exclude_unset=True).items():
        setattr(config, _WEBHOOK_SETTINGS[field_name], value)
    return web.json_response({"url": config.webhook_url, "enabled": config.deliver_webhooks})


async def list_deliveries(request: web.Request) -> web.Response:
    """GET /emulator/deliveries: every delivery attempt so far."""
    return web.json_response(_state(request).deliveries)


async def add_fault(request: web.Request) -> web.Response:
    """POST /emulator/faults: injects a fault; DELETE /emulator/faults clears them."""
    try:
        fault = Fault(**parsed(FaultBody, await _json_object(request)).model_dump())
    except BadBody as error:
        return stackone_error(400, f"not a fault: {error}")
    _state(request).faults.append(fault)
    return web.json_response(asdict(fault), status=201)


async def clear_faults(request: web.Request) -> web.Response:
    """DELETE /emulator/faults."""
    _state(request).faults.clear()
    return web.Response(status=204)


async def configure_behaviour(request: web.Request) -> web.Response:
    """PUT /emulator/behaviour: latency and rate limit of the StackOne endpoints."""
    config = _state(request).config
    try:
        body = parsed(BehaviourBody, await _json_object(request))
    except BadBody as error:
        return stackone_error(400, f"not a behaviour: {error}")
    for field_name, value in body.model_dump(exclude_unset=True).items():
        setattr(config, field_name, value)  # a field of BehaviourBody is one of the config's
    return web.json_response(config.behaviour())


async def stats(request: web.Request) -> web.Response:
    """GET /emulator/stats: StackOne-endpoint requests by route, and emulated 429s."""
    state = _state(request)
    return web.json_response(
        {
            "calls": dict(state.calls),
            "most_in_flight": dict(state.most_in_flight),
            "rate_limited": state.rate_limited,
        }
    )


async def list_requests(request: web.Request) -> web.Response:
    """GET /emulator/requests: the StackOne-endpoint requests kept, oldest first."""
    return web.json_response(list(_state(request).requests))


async def clear_requests(request: web.Request) -> web.Response:
    """DELETE /emulator/requests."""
    _state(request).requests.clear()
    return web.Response(status=204)


async def auth_link_page(request: web.Request) -> web.Response:
    """GET /connect: the hosted Auth Link a person opens in a browser."""
    token = request.query.get("token", "")
    session = _live_session(_state(request), token)
    if session is None:
        return web.Response(status=404, text="This link has expired or does not exist.")
    owner = html.escape(str(session["origin_owner_name"]))
    provider = html.escape(str(session.get("provider") or "bamboohr"))
    page = f"""<!doctype html><title>StackOne emulator</title>
<h1>Connect {provider} for {owner}</h1>
<p>This is the StackOne emulator's Auth Link. Linking creates the account and sends the
signed <code>account.created</code> webhook.</p>
<button onclick="fetch('/emulator/link',{{method:'POST',
  headers:{{'content-type':'application/json'}},
  body:JSON.stringify({{token:'{html.escape(token)}'}})}}).then(r=>r.json())
  .then(a=>document.body.append('Linked account '+a.id))">Link</button>"""
    return web.Response(text=page, content_type="text/html")


async def _deliver(state: EmulatorState, http: aiohttp.ClientSession, delivery: _Delivery) -> None:
    event = delivery.webhook
    for attempt in range(1, DELIVERY_ATTEMPTS + 1):
        url, secret = state.config.webhook_url, state.config.webhook_secret or ""
        body = orjson.dumps({**event, "sent_at": _iso(_now())})
        record: dict[str, Any] = {
            "event": event["event"], "account_id": event["account_id"], "attempt": attempt,
            "status": None, "error": None,
        }  # fmt: skip
        state.deliveries.append(record)
        if url is None:  # switched off by PUT /emulator/webhooks since it was queued
            record["error"] = "no webhook URL is configured"
        else:
            headers = {
                "content-type": "application/json",
                "x-stackone-signature": sign_webhook(secret, body),
            }
            if delivery.traceparent:
                headers["traceparent"] = delivery.traceparent
            try:
                async with http.post(url, data=body, headers=headers) as response:
                    record["status"] = response.status
                    if 200 <= response.status < 300:
                        return
            except (aiohttp.ClientError, TimeoutError) as error:
                record["error"] = f"{type(error).__name__}: {error}"
        await asyncio.sleep(DELIVERY_BACKOFF * 2 ** (attempt - 1))
    _log.warning("emulator gave up delivering %s for %s", event["event"], event["account_id"])


async def _delivery_worker(app: web.Application) -> AsyncIterator[None]:
    state = app[EMULATOR_STATE]
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def work() -> None:
            while True:
                delivery = await state.outbox.get()
                try:
                    await _deliver(state, http, delivery)
                finally:
                    state.outbox.task_done()

        # One worker: webhooks of an account arrive in the order they happened.
        worker = asyncio.create_task(work())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


def build_emulator_app(config: EmulatorConfig) -> web.Application:
    """The emulator as an aiohttp application."""
    from service.emulator.hub import add_hub  # here: hub builds on this module
    from service.emulator.mending import add_mending

    app = web.Application(middlewares=[browser_guard, stackone_edge])
    app[EMULATOR_STATE] = EmulatorState(config)
    app.cleanup_ctx.append(_delivery_worker)
    app.router.add_post("/connect_sessions", create_session)
    app.router.add_post("/connect_sessions/authenticate", authenticate_session)
    app.router.add_get("/accounts", list_accounts)
    app.router.add_get("/accounts/{account_id}", get_account)
    app.router.add_delete("/accounts/{account_id}", delete_account)
    app.router.add_post("/emulator/link", link)
    app.router.add_post("/emulator/accounts", create_account)
    app.router.add_patch("/emulator/accounts/{account_id}", patch_account)
    app.router.add_put("/emulator/webhooks", configure_webhooks)
    app.router.add_get("/emulator/deliveries", list_deliveries)
    app.router.add_post("/emulator/faults", add_fault)
    app.router.add_delete("/emulator/faults", clear_faults)
    app.router.add_put("/emulator/behaviour", configure_behaviour)
    app.router.add_get("/emulator/stats", stats)
    app.router.add_get("/emulator/requests", list_requests)
    app.router.add_delete("/emulator/requests", clear_requests)
    app.router.add_get("/connect", auth_link_page)
    add_hub(app)
    add_mending(app)
    return app
