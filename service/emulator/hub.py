"""The endpoints StackOne's Hub calls, so the real `<stackone-hub>` runs against the emulator.

It follows `@stackone/hub` 1.11.4 (`HUB_VERSION`): the requests and response shapes are
those its `dist/webcomponent.js` makes and reads (the same as `queries.ts` and `types.ts`
in StackOne's public `hub` repository). The Hub sends the connect session token in
`x-hub-session-token`; no API key is involved.

    GET    /hub/settings                    {"enabled_features": [], "existing_account_id"?}
    GET    /hub/connectors[?provider=]      {"integrations": [...]}: the session's
                                            categories and provider filter them
    GET    /hub/connectors/{integration_id} {"config": form, "hub_settings": {...}}
    POST   /hub/accounts                    {"integration_id", "credentials"}: links the
                                            session's account (the emulator's linking rules)
    GET    /hub/accounts/{id}               the session's account, to re-open it
    PATCH  /hub/accounts/{id}               re-links the session's account
    POST   /hub/connection_attempts         an OAuth attempt; GET/DELETE .../{id}
    GET    /connect/oauth2/{integration_id} the OAuth pop-up: OAuth needs the provider's own
                                            site, so the attempt fails with an explanation
    GET    /emulator/logos/{provider}.svg   logos, so the Hub loads nothing from elsewhere

Credentials are checked as an emulated provider would: a required field left out is
refused, and so is a secret (an API key) that is blank or starts with `wrong`, with the
provider's answer in `provider_response`, which the Hub shows in its error state. A secret
that starts with `limited` links the account in status `error`, with a reason: the key
works but lacks a permission, as StackOne reports such accounts.

CORS: the Hub runs on the app's origin and calls these endpoints cross-origin. They answer
as a NestJS API with default CORS does (StackOne's errors are NestJS-shaped), preflights
answered 204 with the requested headers allowed, but only for pages on loopback (the
example app's, as `make demo` serves it): a request from any other origin, preflight or
not, gets 403 and no CORS headers, so a page elsewhere in the same browser can neither
call the Hub's endpoints nor read their answers. StackOne's API-key endpoints are
CORS-protected (the Hub's README says so of `/connect_sessions`), so only `/hub/` answers
CORS here.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import JsonValue

from service.emulator.accounts import AccountNotFound, link_account
from service.emulator.answers import Handler, base_url, body_as, emulator_state, stackone_error
from service.emulator.bodies import CredentialsBody
from service.emulator.connectors import BY_KEY, CONNECTORS, Connector, generic_connector
from service.emulator.origins import is_loopback_origin
from service.emulator.state import (
    Account,
    AttemptError,
    ConnectionAttempt,
    Json,
    Session,
    StatusReason,
    iso,
    now,
)

HUB_VERSION = "1.11.4"
SESSION_HEADER = "x-hub-session-token"
_CORS_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE"


SessionHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def _with_session(handler: SessionHandler) -> Handler:
    """Authenticates a Hub request by its session token, as StackOne does (401 without)."""

    @functools.wraps(handler)
    async def authenticated(request: web.Request) -> web.StreamResponse:
        session = emulator_state(request).live_session(request.headers.get(SESSION_HEADER))
        if session is None:
            return stackone_error(401, "Invalid or expired connect session token")
        return await handler(request, session)

    return authenticated


def offered_connectors(session: Session, provider: str | None = None) -> list[Connector]:
    """The connectors a session may link: its categories and provider filter them; a
    provider the catalogue lacks gets a generic API-key form."""
    categories = set(session.categories)
    wanted = {name for name in (session.provider, provider) if name}
    category = min(categories, default="hris")
    unknown = [generic_connector(key, category) for key in wanted - BY_KEY.keys()]
    catalogue = [*CONNECTORS, *unknown]
    return [
        connector
        for connector in catalogue
        if (not categories or connector.category in categories)
        and all(connector.key == name for name in wanted)
    ]


def _connector(session: Session, integration_id: str | None) -> Connector | None:
    return next(
        (c for c in offered_connectors(session) if c.integration_id == integration_id), None
    )


def _refusal(
    connector: Connector, credentials: dict[str, JsonValue]
) -> tuple[web.Response, AttemptError | None] | None:
    """The emulated provider's answer to credentials it does not accept, with the failed
    attempt's error (None for a form left incomplete, which never reached the provider);
    None when it accepts them."""
    for form_field in connector.fields:
        value = credentials.get(form_field.key)
        if not isinstance(value, str) or not value:
            return stackone_error(400, f"{form_field.label} is required"), None
        if form_field.secret and (not value.strip() or value.startswith("wrong")):
            answer = {"status": 401, "error": "Unauthorized", "message": "Invalid API key"}
            refused = (
                f"{connector.name} refused the credentials: check the {form_field.label} "
                "and try again"
            )
            # The Hub reads `message` as JSON holding the message and the provider's answer.
            detail = {"message": refused, "provider_response": orjson.dumps(answer).decode()}
            failure = AttemptError("invalid_credentials", f"{refused} ({answer['message']})")
            return stackone_error(400, orjson.dumps(detail).decode()), failure
    return None


def _outcome(
    connector: Connector, credentials: dict[str, JsonValue]
) -> tuple[str, list[StatusReason] | None]:
    """The status and reasons the account gets with accepted (string) credentials."""
    secrets_given = [str(credentials[f.key]) for f in connector.fields if f.secret]
    if any(value.startswith("limited") for value in secrets_given):
        reason = StatusReason(
            code="insufficient_permissions",
            description=f"The {connector.name} credentials cannot read employees: "
            "grant that permission at the provider, then link again.",
            timestamp=iso(now()),
        )
        return "error", [reason]
    return "active", None


async def _link(request: web.Request, session: Session) -> web.Response:
    """Checks the form the Hub submitted and links the account."""
    body = await body_as(request, CredentialsBody, "Expected {integration_id, credentials}")
    credentials = body.credentials
    connector = _connector(session, body.integration_id)
    if connector is None or connector.oauth:
        return stackone_error(400, "This session cannot link that integration with a form")
    state = emulator_state(request)
    if (refused := _refusal(connector, credentials)) is not None:
        refusal, failure = refused
        if failure is not None:
            state.open_attempt(session).settle("error", error=failure)
            state.changed()
        return refusal
    status, reasons = _outcome(connector, credentials)
    try:
        # The emulator's one set of linking rules: a re-connect or re-link re-opens the
        # existing account (account.updated), anything else creates one (account.created).
        account, created = link_account(
            state, session, connector.key, status=status, reasons=reasons
        )
    except AccountNotFound as error:
        return stackone_error(404, str(error))
    secret_keys = {f.key for f in connector.fields if f.secret}
    state.lasting.hub_setup_information[account.id] = {
        key: str(value) for key, value in credentials.items() if key not in secret_keys
    }
    state.changed()
    answer = {"id": account.id, "provider": account.provider}
    return web.json_response(answer, status=201 if created else 200)


@_with_session
async def hub_settings(request: web.Request, session: Session) -> web.Response:
    """GET /hub/settings: feature flags, and the account a re-connect session re-opens."""
    answer: Json = {"enabled_features": []}
    if session.account_id:
        answer["existing_account_id"] = session.account_id
    return web.json_response(answer)


@_with_session
async def list_connectors(request: web.Request, session: Session) -> web.Response:
    """GET /hub/connectors: the integrations the session offers."""
    offered = offered_connectors(session, request.query.get("provider"))
    base = base_url(request)
    return web.json_response({"integrations": [c.integration(base) for c in offered]})


@_with_session
async def connector_config(request: web.Request, session: Session) -> web.Response:
    """GET /hub/connectors/{integration_id}: the connector's form. The person chose a
    provider: a form-based connection attempt is under way (pending) until submitted."""
    connector = _connector(session, request.match_info["integration_id"])
    if connector is None:
        return stackone_error(404, "Integration not found")
    if not connector.oauth:  # an OAuth attempt is the Hub's to begin
        emulator_state(request).open_attempt(session)
    settings: Json = {"configured_webhook_events": {}, "project_settings": {}}
    return web.json_response(
        {"config": connector.config(base_url(request)), "hub_settings": settings}
    )


@_with_session
async def link_through_hub(request: web.Request, session: Session) -> web.Response:
    """POST /hub/accounts: links the account with the submitted credentials."""
    return await _link(request, session)


def _own_account(request: web.Request, session: Session) -> Account | None:
    """The path's account when it is the one the session re-opens (a session sees no other)."""
    account_id = request.match_info["account_id"]
    if account_id != session.account_id:
        return None
    return emulator_state(request).accounts.get(account_id)


@_with_session
async def account_data(request: web.Request, session: Session) -> web.Response:
    """GET /hub/accounts/{id}: the account a re-connect session re-opens, without secrets."""
    account = _own_account(request, session)
    if account is None:
        return stackone_error(404, f"Account {request.match_info['account_id']} not found")
    connector = offered_connectors(session, account.provider)
    integration_id = connector[0].integration_id if connector else None
    setup = emulator_state(request).lasting.hub_setup_information.get(account.id, {})
    return web.json_response(
        {
            "secureId": account.id,
            "provider": account.provider,
            "setupInformation": setup,
            "version": "1.0.0",
            "environment": "production",
            "integrationId": integration_id,
        }
    )


@_with_session
async def relink_through_hub(request: web.Request, session: Session) -> web.Response:
    """PATCH /hub/accounts/{id}: re-links the session's account with new credentials."""
    if _own_account(request, session) is None:
        return stackone_error(404, f"Account {request.match_info['account_id']} not found")
    return await _link(request, session)


@_with_session
async def create_attempt(request: web.Request, session: Session) -> web.Response:
    """POST /hub/connection_attempts: an OAuth attempt the Hub then polls."""
    attempt_id, _ = emulator_state(request).new_attempt(session)
    return web.json_response({"id": attempt_id}, status=201)


def _attempt(request: web.Request, session: Session, attempt_id: str) -> ConnectionAttempt | None:
    """The attempt `attempt_id` when `session` made it."""
    attempt = emulator_state(request).lasting.hub_attempts.get(attempt_id)
    return attempt if attempt is not None and attempt.token == session.token else None


@_with_session
async def poll_attempt(request: web.Request, session: Session) -> web.Response:
    """GET /hub/connection_attempts/{id}: pending, authenticated, error, cancelled."""
    attempt = _attempt(request, session, request.match_info["attempt_id"])
    if attempt is None:
        return stackone_error(404, "Connection attempt not found")
    return web.json_response(attempt.to_json())


@_with_session
async def cancel_attempt(request: web.Request, session: Session) -> web.Response:
    """DELETE /hub/connection_attempts/{id}."""
    attempt = _attempt(request, session, request.match_info["attempt_id"])
    if attempt is None:
        return stackone_error(404, "Connection attempt not found")
    if attempt.status == "pending":
        attempt.settle("cancelled")
        emulator_state(request).changed()
    return web.Response(status=204)


async def oauth_popup(request: web.Request) -> web.Response:
    """GET /connect/oauth2/{integration_id}: where the Hub sends OAuth sign-ins. The
    emulator cannot reach the provider, so it says so and fails the attempt."""
    state = emulator_state(request)
    session = state.live_session(request.query.get("token"))
    connector = None if session is None else _connector(session, request.match_info["id"])
    if session is None or connector is None:
        return web.Response(status=404, text="This sign-in link has expired or does not exist.")
    explanation = (
        f"{connector.name} signs in with OAuth on its own site, which the StackOne emulator "
        "cannot reach. Set STACKONE_CONNECT_API_KEY to link it through the real StackOne."
    )
    attempt = _attempt(request, session, request.query.get("connection_attempt_id", ""))
    if attempt is not None:
        attempt.settle("error", error=AttemptError("OAuth needs the real StackOne", explanation))
        state.changed()
    page = f"""<!doctype html><title>StackOne emulator</title>
<h1>{html.escape(connector.name)}: OAuth is not emulated</h1><p>{html.escape(explanation)}</p>
<button onclick="window.close()">Close</button>"""
    return web.Response(text=page, content_type="text/html")


async def logo(request: web.Request) -> web.Response:
    """GET /emulator/logos/{provider}.svg: a coloured tile with the provider's initial."""
    key = request.match_info["provider"]
    connector = BY_KEY.get(key) or generic_connector(key, "hris")
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
        f'<rect width="24" height="24" rx="5" fill="{connector.color}"/>'
        '<text x="12" y="17" font-family="sans-serif" font-size="14" font-weight="bold" '
        f'fill="#fff" text-anchor="middle">{html.escape(connector.name[:1])}</text></svg>'
    )
    return web.Response(
        text=svg, content_type="image/svg+xml", headers={"cache-control": "max-age=3600"}
    )


@web.middleware
async def hub_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS on the Hub's endpoints for loopback pages: preflights answered here, every
    answer readable; other origins get 403 without CORS headers."""
    if not request.path.startswith("/hub/"):
        return await handler(request)
    origin = request.headers.get("origin")
    if origin is not None and not is_loopback_origin(origin):
        return stackone_error(403, f"The emulator's Hub answers pages on loopback, not {origin}")
    if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
        headers = {
            "access-control-allow-origin": "*",
            "access-control-allow-methods": _CORS_METHODS,
            "vary": "Origin, Access-Control-Request-Headers",
        }
        if requested := request.headers.get("access-control-request-headers"):
            headers["access-control-allow-headers"] = requested
        return web.Response(status=204, headers=headers)
    try:
        response = await handler(request)
    except web.HTTPException as error:
        error.headers["access-control-allow-origin"] = "*"
        error.headers["vary"] = "Origin"
        raise
    response.headers["access-control-allow-origin"] = "*"
    response.headers["vary"] = "Origin"
    return response


def add_hub(app: web.Application) -> None:
    """Adds the Hub's endpoints and their CORS to the emulator `app`."""
    # Outermost, so the emulator's own answers (429s, faults) are readable cross-origin too.
    app.middlewares.insert(0, hub_cors)
    app.router.add_get("/hub/settings", hub_settings)
    app.router.add_get("/hub/connectors", list_connectors)
    app.router.add_get("/hub/connectors/{integration_id}", connector_config)
    app.router.add_post("/hub/accounts", link_through_hub)
    app.router.add_get("/hub/accounts/{account_id}", account_data)
    app.router.add_patch("/hub/accounts/{account_id}", relink_through_hub)
    app.router.add_post("/hub/connection_attempts", create_attempt)
    app.router.add_get("/hub/connection_attempts/{attempt_id}", poll_attempt)
    app.router.add_delete("/hub/connection_attempts/{attempt_id}", cancel_attempt)
    app.router.add_get("/connect/oauth2/{id}", oauth_popup)
    app.router.add_get("/emulator/logos/{provider}.svg", logo)
