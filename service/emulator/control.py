"""The emulator's control room: actions StackOne has no endpoint for, so tests and demos
can play the user, the provider and the network. No auth (the emulator listens on
loopback; `origins` refuses what other sites' pages send).

    POST   /emulator/link                    {"token", "provider"?, "status"?, "status_reasons"?}
                                             completes the Hub for a session with StackOne's
                                             rules (see `accounts.link_account`): 201 and
                                             account.created for a new account, 200 and
                                             account.updated for a re-connected one
    POST   /emulator/accounts                create an account directly; account.created
    PATCH  /emulator/accounts/{id}           {"status"?, "status_reasons"?, "label"?,
                                             "provider"?, "shared"?}; account.updated
    POST   /emulator/accounts/{id}/break     {"status"?, "status_reasons"?}: the account goes
                                             to error (default), expired or suspended, with
                                             StackOne-like reasons; account.updated
    POST   /emulator/accounts/{id}/mend      back to active, reasons cleared (as an
                                             administrator fixing it at StackOne would);
                                             account.updated
    PUT    /emulator/webhooks                {"url"?, "secret"?, "enabled"?}
    GET    /emulator/deliveries              every delivery attempt
    POST   /emulator/faults                  inject a fault (see `state.Fault`); DELETE clears
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
"""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web

from service.emulator.accounts import (
    AccountNotFound,
    default_reasons,
    link_account,
    new_account,
    set_status,
    stamped,
    update_account,
)
from service.emulator.answers import (
    body_as,
    emulator_state,
    live_session_of,
    stackone_error,
    with_account,
)
from service.emulator.bodies import (
    AccountChanges,
    AccountSpec,
    BehaviourBody,
    BreakBody,
    FaultBody,
    LinkBody,
    WebhooksBody,
)
from service.emulator.state import Account, Fault


async def link_session(request: web.Request) -> web.Response:
    """POST /emulator/link: plays "the user completed the Hub" for a session token."""
    state = emulator_state(request)
    body = await body_as(request, LinkBody, "not a link")
    missing = "No live connect session has this token"
    session = live_session_of(request, body.token, web.HTTPNotFound, missing)
    try:
        linked = link_account(
            state,
            session,
            body.provider,
            status=body.status or "active",
            reasons=stamped(body.status_reasons),
        )
    except AccountNotFound as error:
        return stackone_error(404, str(error))
    return web.json_response(state.answer(linked.account), status=201 if linked.created else 200)


async def create_account_directly(request: web.Request) -> web.Response:
    """POST /emulator/accounts: creates an account without a session."""
    state = emulator_state(request)
    account = new_account(state, await body_as(request, AccountSpec, "not an account"))
    return web.json_response(state.answer(account), status=201)


@with_account
async def change_account(request: web.Request, account: Account) -> web.Response:
    """PATCH /emulator/accounts/{id}: changes an account and sends account.updated."""
    state = emulator_state(request)
    update_account(state, account, await body_as(request, AccountChanges, "not a change"))
    return web.json_response(state.answer(account))


@with_account
async def break_account(request: web.Request, account: Account) -> web.Response:
    """POST /emulator/accounts/{id}/break: to error, expired or suspended, with reasons."""
    body = (
        await body_as(request, BreakBody, "not a break") if request.can_read_body else BreakBody()
    )
    reasons = stamped(body.status_reasons) or default_reasons(body.status)
    state = emulator_state(request)
    set_status(state, account, body.status, reasons)
    return web.json_response(state.answer(account))


@with_account
async def mend_account(request: web.Request, account: Account) -> web.Response:
    """POST /emulator/accounts/{id}/mend: back to active, its reasons cleared."""
    state = emulator_state(request)
    set_status(state, account, "active", None)
    return web.json_response(state.answer(account))


# The config attribute each field of `PUT /emulator/webhooks` sets (only the fields given).
_WEBHOOK_SETTINGS = {
    "url": "webhook_url",
    "secret": "webhook_secret",
    "enabled": "deliver_webhooks",
}


async def configure_webhooks(request: web.Request) -> web.Response:
    """PUT /emulator/webhooks: changes where and whether webhooks are delivered."""
    config = emulator_state(request).config
    body = await body_as(request, WebhooksBody, "not a webhook setting")
    for field_name, value in body.model_dump(exclude_unset=True).items():
        setattr(config, _WEBHOOK_SETTINGS[field_name], value)
    return web.json_response({"url": config.webhook_url, "enabled": config.deliver_webhooks})


async def list_deliveries(request: web.Request) -> web.Response:
    """GET /emulator/deliveries: every delivery attempt so far."""
    return web.json_response([d.to_json() for d in emulator_state(request).deliveries])


async def add_fault(request: web.Request) -> web.Response:
    """POST /emulator/faults: injects a fault; DELETE /emulator/faults clears them."""
    fault = Fault(**(await body_as(request, FaultBody, "not a fault")).model_dump())
    emulator_state(request).faults.append(fault)
    return web.json_response(asdict(fault), status=201)


async def clear_faults(request: web.Request) -> web.Response:
    """DELETE /emulator/faults."""
    emulator_state(request).faults.clear()
    return web.Response(status=204)


async def configure_behaviour(request: web.Request) -> web.Response:
    """PUT /emulator/behaviour: latency and rate limit of the StackOne endpoints."""
    config = emulator_state(request).config
    body = await body_as(request, BehaviourBody, "not a behaviour")
    for field_name, value in body.model_dump(exclude_unset=True).items():
        setattr(config, field_name, value)  # a field of BehaviourBody is one of the config's
    return web.json_response(config.behaviour())


async def stats(request: web.Request) -> web.Response:
    """GET /emulator/stats: StackOne-endpoint requests by route, and emulated 429s."""
    state = emulator_state(request)
    return web.json_response(
        {
            "calls": dict(state.calls),
            "most_in_flight": dict(state.most_in_flight),
            "rate_limited": state.rate_limited,
        }
    )


async def list_requests(request: web.Request) -> web.Response:
    """GET /emulator/requests: the StackOne-endpoint requests kept, oldest first."""
    return web.json_response([r.to_json() for r in emulator_state(request).requests])


async def clear_requests(request: web.Request) -> web.Response:
    """DELETE /emulator/requests."""
    emulator_state(request).requests.clear()
    return web.Response(status=204)


def add_control(app: web.Application) -> None:
    """Adds the emulator's own actions to the emulator `app`."""
    app.router.add_post("/emulator/link", link_session)
    app.router.add_post("/emulator/accounts", create_account_directly)
    app.router.add_patch("/emulator/accounts/{account_id}", change_account)
    app.router.add_post("/emulator/accounts/{account_id}/break", break_account)
    app.router.add_post("/emulator/accounts/{account_id}/mend", mend_account)
    app.router.add_put("/emulator/webhooks", configure_webhooks)
    app.router.add_get("/emulator/deliveries", list_deliveries)
    app.router.add_post("/emulator/faults", add_fault)
    app.router.add_delete("/emulator/faults", clear_faults)
    app.router.add_put("/emulator/behaviour", configure_behaviour)
    app.router.add_get("/emulator/stats", stats)
    app.router.add_get("/emulator/requests", list_requests)
    app.router.add_delete("/emulator/requests", clear_requests)
