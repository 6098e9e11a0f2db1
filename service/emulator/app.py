"""The StackOne emulator: the same endpoints, shapes, auth check and error bodies as
StackOne (per shared/stackone/README.md), accounts in memory, signed webhooks.

It is an independent implementation of the contract (it does not import our client), so
tests of the client against it mean something. It is three rooms, each registering its
own routes over the typed state of `state`:

- `stackone_api`: StackOne's API (connect sessions, accounts, the Auth Link page), behind
  StackOne's edge (stats, rate limit, latency, faults, the API key);
- `profiles`: StackOne's connector profiles API, behind the same edge;
- `hub`: the endpoints StackOne's Hub calls (`/hub/...`), with their CORS;
- `control`: the emulator's own actions (`/emulator/...`: linking, faults, behaviour,
  webhooks, deliveries, stats, breaking and mending accounts).

What a web page elsewhere could make a browser send is refused before anything else
(`origins`): requests addressed to a name that is not loopback, requests that change state
sent from another origin (the Hub's from loopback pages excepted), and bodies not
declared `application/json`. Webhooks go out through `delivery`.
"""

from __future__ import annotations

from aiohttp import web

from service.emulator.answers import Handler, emulator_state, stackone_error
from service.emulator.control import add_control
from service.emulator.delivery import delivery_worker
from service.emulator.hub import add_hub
from service.emulator.origins import refusal
from service.emulator.profiles import add_connector_profiles
from service.emulator.stackone_api import add_stackone_api
from service.emulator.state import EMULATOR_STATE, EmulatorConfig, EmulatorState


@web.middleware
async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses what a browser could send on another site's behalf (see `origins`)."""
    refused = refusal(request, emulator_state(request).config.public_base_url)
    if refused is not None:
        return stackone_error(*refused)
    return await handler(request)


def build_emulator_app(config: EmulatorConfig) -> web.Application:
    """The emulator as an aiohttp application."""
    app = web.Application(middlewares=[browser_guard])
    app[EMULATOR_STATE] = EmulatorState(config)
    app.cleanup_ctx.append(delivery_worker)
    add_stackone_api(app)  # its edge after the guard
    add_connector_profiles(app)
    add_control(app)
    add_hub(app)  # its CORS outermost, so the edge's answers (429s, faults) are readable
    return app
